//! The rollback itself: look, plan, then act in the one order that keeps a bootable `root`.
//!
//! 1. Every check first (`plan.rs`); a refusal changes nothing.
//! 2. A leftover of an interrupted run under the temporary name is renamed to `<temp>.<id>`.
//!    The temporary name only ever holds a fresh snapshot not yet swapped in, or an old root
//!    already swapped out: both are meant to go, but deleting them waits until after the swap,
//!    so that something undeletable cannot block the rollback. `root` is not touched.
//! 3. The blank is snapshotted under the temporary name (the kernel commits snapshot creation),
//!    then `renameat2(RENAME_EXCHANGE)` swaps it with `root` in one transaction (with the new
//!    default subvolume, if the default follows `root`), then BTRFS_IOC_SYNC commits. A power
//!    cut before the commit leaves the old `root`, after it the fresh one: at no instant is
//!    there no `root`.
//! 4. The old root, now under the temporary name, is deleted children first, then leftovers
//!    of earlier runs, then committed. A cut here leaves a leftover for the next run; a
//!    failure here is exit status 3: the fresh root is in place.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{bail, Context, Result};
use nix::fcntl::renameat;

use crate::device;
use crate::ioctl::{self, Rename};
use crate::logging::{self, LOG_FILE_CAP};
use crate::mount::TopLevel;
use crate::names::{quoted, Names};
pub use crate::plan::Retention;
use crate::plan::{self, OldRoot, OldRootsDir, Plan, Slot, State, Step, OLD_ROOTS, RETIRED_XATTR};
use crate::subvolume::{self, Entry};

/// Where the filesystem is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub device: PathBuf,
    pub mountpoint: PathBuf,
    pub names: Names,
    pub wait: Duration,
}

#[derive(Debug)]
pub enum Outcome {
    /// `root` is a fresh snapshot of the blank and nothing is left over.
    RolledBack,
    /// Nothing was changed: a dry run, `list` or `diff`.
    Looked,
    /// Refused or failed before the swap: `root` is the subvolume it was. Already logged.
    Refused,
    /// `root` is a fresh snapshot, but deleting what it replaced failed; the next run finishes.
    /// Already logged.
    CleanupFailed,
}

/// Wait for the device, check it, and mount its top-level volume.
pub fn open(target: &Target, readonly: bool) -> Result<(TopLevel, String)> {
    device::wait_for(&target.device, target.wait)?;
    let described = device::check(&target.device)?;
    let top = TopLevel::mount(&target.device, &target.mountpoint, readonly)?;
    log::debug!(
        "mounted the top-level volume of {} at {}",
        target.device.display(),
        top.path().display()
    );
    Ok((top, described))
}

/// How many lines of the plan go to the log file.
const PLAN_LINES: usize = 60;

/// The file `btrfs-rollback restore` leaves in the top-level volume: the id of the root it
/// put in place, which the next `run` keeps once.
pub const RESTORE_MARKER: &str = "btrfs-rollback.restored";

/// Read what the top-level volume holds.
pub fn inspect(top: &TopLevel, names: &Names) -> Result<State> {
    let fs = top.fd();
    let slot = |path: &Path| -> Result<Slot> {
        let entry = subvolume::entry(fs, path.as_os_str())?;
        let Entry::Subvolume { id, .. } = entry else {
            return Ok(Slot {
                entry,
                ..Slot::missing()
            });
        };
        let fd = subvolume::expect(fs, path, id)?;
        let info = ioctl::get_subvol_info(fd.as_fd())
            .with_context(|| format!("cannot read the creation time of {}", quoted(path)))?;
        Ok(Slot {
            entry,
            nested: subvolume::nested_post_order(fs, id, path)?,
            created: info.otime,
            modified: info.generation > info.otransid,
        })
    };
    let mut asides = Vec::new();
    let mut prefix = names.temp.clone();
    prefix.push(".");
    for name in subvolume::names_with_prefix(fs, &prefix)? {
        // `<temp>.<id>` is ours only if it is subvolume <id>; anything else is left alone.
        let id = plan::aside_id(names, &name);
        let slot = slot(Path::new(&name))?;
        match (id, &slot.entry) {
            (Some(id), Entry::Subvolume { id: found, .. }) if id == *found => {
                asides.push((name, slot))
            }
            _ => log::debug!(
                "{} is not a leftover of this tool; leaving it",
                quoted(&name)
            ),
        }
    }
    let (old_roots_dir, old_roots) = old_roots(fs, &slot)?;
    let restored = crate::restore::read_marker(fs)?;
    Ok(State {
        root: slot(Path::new(&names.root))?,
        blank: slot(Path::new(&names.blank))?,
        temp: slot(Path::new(&names.temp))?,
        asides,
        default_id: subvolume::default_id(fs)?,
        old_roots_dir,
        old_roots,
        restored,
    })
}

/// What `old_roots/` is, and the subvolumes in it.
fn old_roots(
    fs: BorrowedFd<'_>,
    slot: &dyn Fn(&Path) -> Result<Slot>,
) -> Result<(OldRootsDir, Vec<OldRoot>)> {
    use nix::sys::stat::{fstatat, SFlag};
    let st = match fstatat(fs, OLD_ROOTS, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(ioctl::Errno::ENOENT) => return Ok((OldRootsDir::Missing, Vec::new())),
        Err(e) => return Err(e).context(format!("cannot stat {OLD_ROOTS:?}")),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Ok((OldRootsDir::Unusable("not a directory"), Vec::new()));
    }
    let dir = subvolume::open_dir(fs, OLD_ROOTS)?;
    let mut roots = Vec::new();
    for name in subvolume::names_with_prefix(dir.as_fd(), OsStr::new(""))? {
        if name == "." || name == ".." {
            continue;
        }
        let path = Path::new(OLD_ROOTS).join(&name);
        let s = slot(&path)?;
        if let Entry::Subvolume { id, .. } = s.entry {
            let fd = subvolume::expect(fs, &path, id)?;
            let generation = ioctl::get_subvol_info(fd.as_fd())
                .with_context(|| format!("cannot read the generation of {}", quoted(&path)))?
                .generation;
            roots.push(OldRoot {
                name,
                id,
                created: s.created,
                nested: s.nested,
                retired: retired_mark(fd.as_fd(), &path),
                generation,
            });
        }
    }
    roots.sort_by_key(|r| r.id);
    Ok((OldRootsDir::Usable, roots))
}

/// The time in an old root's mark (`plan::RETIRED_XATTR`), `None` without a readable one.
fn retired_mark(fd: BorrowedFd<'_>, path: &Path) -> Option<i64> {
    match ioctl::get_xattr(fd, RETIRED_XATTR) {
        Ok(Some(value)) => std::str::from_utf8(&value).ok()?.trim().parse().ok(),
        Ok(None) => None,
        Err(e) => {
            log::warn!(
                "cannot read the mark of {} ({e}); it is treated as not kept by this tool",
                quoted(path)
            );
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub log: PathBuf,
    /// Go on even if `root` is mounted somewhere (see `TopLevel::check_not_in_use`).
    pub force_mounted: bool,
    pub dry_run: bool,
    /// With `dry_run`: the plan as JSON.
    pub json: bool,
    pub retention: Retention,
}

/// `btrfs-rollback run`.
pub fn run(target: &Target, options: &RunOptions) -> Result<Outcome> {
    let (log_file, dry_run) = (options.log.as_path(), options.dry_run);
    let names = &target.names;
    let (top, described) = open(target, dry_run)?;
    let _lock = top
        .lock()
        .with_context(|| format!("{} is busy", target.device.display()))?;
    // Declared after `top`, so it is closed before the volume is unmounted.
    let _log = if dry_run {
        None
    } else {
        match logging::attach_file(top.fd(), log_file, LOG_FILE_CAP) {
            Ok(log) => Some(log),
            Err(e) => {
                log::warn!(
                    "cannot write the log file {} on the top-level volume ({e}); going on without it",
                    log_file.display()
                );
                None
            }
        }
    };
    log::info!(
        "{} {} to {} on {described} (version {})",
        if dry_run {
            "dry run: would roll back"
        } else {
            "rolling back"
        },
        quoted(&names.root),
        quoted(&names.blank),
        env!("CARGO_PKG_VERSION"),
    );
    // Errors from here on are logged while the log file is still open.
    let in_use = match top.check_not_in_use(&names.root, options.force_mounted, "roll back") {
        Err(e) if dry_run => {
            log::warn!("a run would refuse: {e:#}");
            Ok(())
        }
        other => other,
    };
    let result = in_use
        .and_then(|()| inspect(&top, names))
        .and_then(|state| {
            let plan = plan::plan(names, &state, &options.retention, logging::now())
                .context("refusing to roll back")?;
            for warning in &plan.warnings {
                log::warn!("{warning}");
            }
            if dry_run && options.json {
                print!("{}", plan.to_json(names).to_string_pretty());
                return Ok(Outcome::Looked);
            }
            if dry_run {
                print!(
                    "dry run, nothing changed; a run would:\n{}",
                    plan.describe(names)
                );
                return Ok(Outcome::Looked);
            }
            // The plan goes to the log file; a huge one only in part (it rotates at 1 MiB).
            let described = plan.describe(names);
            let lines: Vec<&str> = described.lines().collect();
            for line in lines.iter().take(PLAN_LINES) {
                log::debug!("plan: {line}");
            }
            if lines.len() > PLAN_LINES {
                log::debug!("plan: ... {} more lines", lines.len() - PLAN_LINES);
            }
            execute(&top, names, &plan, &target.device)
        });
    result.or_else(|e| {
        log::error!(
            "{e:#}; {} on {} was not changed",
            quoted(&names.root),
            target.device.display()
        );
        Ok(Outcome::Refused)
    })
}

fn execute(top: &TopLevel, names: &Names, plan: &Plan, device: &Path) -> Result<Outcome> {
    let fs = top.fd();
    let start = Instant::now();
    // Set once a fresh `root` is committed: from then on a failure is a cleanup failure.
    let mut fresh: Option<u64> = None;
    let mut old_went = String::new();
    for step in &plan.steps {
        let result = match step {
            Step::KeepRestored { id } => {
                remove_restore_marker(fs)?;
                log::info!(
                    "done: kept {} (ID {id}) this once, as `btrfs-rollback restore` asked; the \
                     next boot rolls back again",
                    quoted(&names.root)
                );
                return Ok(Outcome::RolledBack);
            }
            Step::ClearRestoreMarker => remove_restore_marker(fs),
            Step::DefaultToRoot => default_to_root(fs, names),
            Step::SetAside { id } => set_aside(fs, names, *id),
            Step::CreateRoot => create_root(fs, names).map(|id| {
                fresh = Some(id);
                logging::sync_file();
            }),
            Step::Swap {
                old,
                default_follows,
            } => swap(fs, names, *old, *default_follows).map(|id| {
                fresh = Some(id);
                logging::sync_file();
            }),
            Step::DeleteOld { id, .. } => delete_expected(fs, &names.temp, *id).map(|nested| {
                old_went =
                    format!("; deleted the old root (ID {id}) and {nested} nested subvolume(s)")
            }),
            Step::RemoveLeftover { name, id, .. } => delete_expected(fs, name, *id).map(|nested| {
                log::info!(
                    "deleted {} (ID {id}), left over from an earlier run, with {nested} \
                         nested subvolume(s)",
                    quoted(name)
                );
            }),
            Step::KeepOld { from, id, to } => keep_old(fs, from, *id, to).map(|()| {
                let dest = quoted(&Path::new(OLD_ROOTS).join(to)).to_string();
                if *from == names.temp {
                    old_went = format!("; kept the old root (ID {id}) as {dest}");
                } else {
                    log::info!(
                        "kept {} (ID {id}), left over from an earlier run, as {dest}",
                        quoted(from)
                    );
                }
            }),
            Step::PruneOld { old } => prune_old(fs, old),
        };
        if let Err(e) = result {
            let root = quoted(&names.root);
            let device = device.display();
            if fresh.is_some() {
                log::error!(
                    "{e:#}; the fresh {root} on {device} is in place and committed; what could \
                     not be deleted or kept stays in the top-level volume under {} (or \
                     {}.<ID>), and the next run tries again",
                    quoted(&names.temp),
                    quoted(&names.temp),
                );
                return Ok(Outcome::CleanupFailed);
            }
            return Err(e);
        }
    }
    let new = fresh.context("internal error: the plan left no fresh root")?;
    log::info!(
        "done: {} is a fresh snapshot of {} (ID {new}){old_went} in {:.2} s",
        quoted(&names.root),
        quoted(&names.blank),
        start.elapsed().as_secs_f64()
    );
    Ok(Outcome::RolledBack)
}

/// Move `from` (subvolume `id`) to `old_roots/<to>`, never over an existing name, and commit.
pub fn keep_old(fs: BorrowedFd<'_>, from: &OsStr, id: u64, to: &OsStr) -> Result<()> {
    match nix::sys::stat::mkdirat(
        fs,
        OLD_ROOTS,
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) | Err(ioctl::Errno::EEXIST) => {}
        Err(e) => return Err(e).context(format!("cannot create {OLD_ROOTS:?}")),
    }
    let old = subvolume::expect(fs, from, id)?;
    if let Err(e) = mark_retired(old.as_fd(), from) {
        log::warn!(
            "{e:#}; it is kept without the mark, so retention will never prune it: delete it by \
             hand when it is no longer wanted"
        );
    }
    let dir = subvolume::open_dir(fs, OLD_ROOTS)?;
    let dest = Path::new(OLD_ROOTS).join(to);
    ioctl::renameat2(fs, from, dir.as_fd(), to, Rename::NoReplace).with_context(|| {
        format!(
            "cannot move {} (ID {id}) to {}",
            quoted(from),
            quoted(&dest)
        )
    })?;
    ioctl::sync(fs).with_context(|| format!("cannot commit {}", quoted(&dest)))?;
    log::debug!("kept {} (ID {id}) as {}", quoted(from), quoted(&dest));
    Ok(())
}

/// Mark the root at `path` (open as `fd`) as retired by this tool now, so that retention may
/// prune it later (`plan::RETIRED_XATTR`). Also what makes it the most recently used.
pub fn mark_retired(fd: BorrowedFd<'_>, path: &OsStr) -> Result<()> {
    let now = logging::now().to_string();
    ioctl::set_xattr(fd, RETIRED_XATTR, now.as_bytes()).with_context(|| {
        format!(
            "cannot mark {} as an old root kept by btrfs-rollback ({RETIRED_XATTR})",
            quoted(path)
        )
    })
}

fn prune_old(fs: BorrowedFd<'_>, old: &OldRoot) -> Result<()> {
    let nested = delete_expected(fs, old.path().as_os_str(), old.id)?;
    let (y, mo, d, h, mi, s) = crate::logging::utc(old.created.max(0) as u64);
    log::info!(
        "pruned the old root {} (ID {}, created {y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC) \
         with {nested} nested subvolume(s)",
        quoted(&old.path()),
        old.id
    );
    Ok(())
}

fn remove_restore_marker(fs: BorrowedFd<'_>) -> Result<()> {
    match nix::unistd::unlinkat(fs, RESTORE_MARKER, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(ioctl::Errno::ENOENT) => {}
        Err(e) => return Err(e).context(format!("cannot remove {RESTORE_MARKER:?}")),
    }
    ioctl::sync(fs).context("cannot commit the removal of the restore marker")
}

/// Snapshot the blank under the temporary name, exchange it with `root`, optionally make it
/// the default subvolume, and commit: the exchange and the new default land in one
/// transaction. Returns the fresh root's id once committed.
fn swap(fs: BorrowedFd<'_>, names: &Names, old: u64, default_follows: bool) -> Result<u64> {
    let new = subvolume::snapshot(fs, &names.blank, &names.temp)?;
    log::debug!(
        "snapshotted {} as {} (ID {new})",
        quoted(&names.blank),
        quoted(&names.temp)
    );
    if let Err(e) = ioctl::renameat2(
        fs,
        names.temp.as_os_str(),
        fs,
        names.root.as_os_str(),
        Rename::Exchange,
    ) {
        // `root` is untouched; take the unused snapshot away again.
        if ioctl::snap_destroy_by_id(fs, new).is_ok() {
            let _ = ioctl::sync(fs);
        }
        return Err(e).with_context(|| {
            format!(
                "cannot exchange {} with {} (renameat2 RENAME_EXCHANGE)",
                quoted(&names.temp),
                quoted(&names.root)
            )
        });
    }
    if default_follows {
        ioctl::set_default_subvol(fs, new).with_context(|| {
            format!(
                "cannot make the fresh {} (ID {new}) the default subvolume",
                quoted(&names.root)
            )
        })?;
    }
    ioctl::sync(fs).with_context(|| {
        format!(
            "{} was exchanged with a fresh snapshot (ID {new}), but the commit failed: after a \
             reboot {} is either the old or the fresh subvolume, and the next run handles both",
            quoted(&names.root),
            quoted(&names.root)
        )
    })?;
    subvolume::expect(fs, &names.root, new)?;
    log::debug!(
        "exchanged {} (now ID {new}) with the old root (ID {old}, now {}){} and committed",
        quoted(&names.root),
        quoted(&names.temp),
        if default_follows {
            ", made it the default subvolume"
        } else {
            ""
        }
    );
    Ok(new)
}

/// `root` is missing: snapshot the blank as `root` and commit. Returns its id.
fn create_root(fs: BorrowedFd<'_>, names: &Names) -> Result<u64> {
    let id = subvolume::snapshot(fs, &names.blank, &names.root)?;
    ioctl::sync(fs).context("cannot commit the new root")?;
    log::info!(
        "{} was missing: created it as a snapshot of {} (ID {id})",
        quoted(&names.root),
        quoted(&names.blank)
    );
    Ok(id)
}

/// Rename the leftover under the temporary name out of the way of the swap.
fn set_aside(fs: BorrowedFd<'_>, names: &Names, id: u64) -> Result<()> {
    subvolume::expect(fs, &names.temp, id)?;
    let aside = plan::aside_name(names, id);
    renameat(fs, names.temp.as_os_str(), fs, aside.as_os_str()).with_context(|| {
        format!(
            "cannot rename {} (ID {id}), left over from an interrupted run, to {}",
            quoted(&names.temp),
            quoted(&aside)
        )
    })?;
    log::info!(
        "renamed {} (ID {id}), left over from an interrupted run, to {}; it is deleted after \
         the swap",
        quoted(&names.temp),
        quoted(&aside)
    );
    Ok(())
}

/// Delete the tree under `name`, after checking that `name` is still subvolume `id`.
/// Returns how many nested subvolumes went with it.
fn delete_expected(fs: BorrowedFd<'_>, name: &OsStr, id: u64) -> Result<usize> {
    subvolume::expect(fs, name, id)?;
    subvolume::delete_tree(fs, id, Path::new(name))
}

/// Make the subvolume now called `root` the default one, and commit.
fn default_to_root(fs: BorrowedFd<'_>, names: &Names) -> Result<()> {
    let Entry::Subvolume { id, .. } = subvolume::entry(fs, &names.root)? else {
        bail!("{} is not a subvolume", quoted(&names.root));
    };
    let before = subvolume::default_id(fs)?;
    ioctl::set_default_subvol(fs, id)
        .with_context(|| format!("cannot make {} the default subvolume", quoted(&names.root)))?;
    ioctl::sync(fs).context("cannot commit the default subvolume")?;
    log::info!(
        "the default subvolume was ID {before}; it is now {} (ID {id})",
        quoted(&names.root)
    );
    Ok(())
}
