//! `btrfs-rollback restore NAME`: make the kept old root `old_roots/NAME` the root for the next
//! boot, crash-safely.
//!
//! 1. Check: `old_roots/NAME` is a writable subvolume; `root` is a subvolume or missing.
//!    If `root` is mounted (a running system), a warning says that it goes on in the replaced
//!    root until it stops.
//! 2. Write the restore marker (the id of `old_roots/NAME`) under a temporary name, created
//!    exclusively and never through a symbolic link, rename it into place and commit, so that
//!    the next `run` keeps that subvolume as `root` once instead of rolling it back.
//! 3. Exchange `old_roots/NAME` with `root` (one transaction, with the default subvolume if it
//!    follows `root`) and commit. Before this commit a power cut leaves everything as it was
//!    (the marker then names a subvolume that is not `root`, and `run` ignores and removes it);
//!    after it, `root` is the restored one and the replaced root is kept as `old_roots/NAME`.
//! 4. Rename the replaced root to a name from its own creation time, and commit.
//!
//! A failure says how far it got: before the exchange nothing was changed (exit 1; a marker
//! left behind names a subvolume that is not `root`, so `run` ignores it); after it the
//! restored root is in place and the message says where the replaced one is (exit 3).

//!
//! `--dry-run` does the checks of step 1 on a read-only mount and says what steps 2-4 would
//! do, changing nothing.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::beneath;
use crate::exchange::{self, exchange};
use crate::failure::{Disk, Failure};
use crate::inspect::inspect;
use crate::ioctl::{self, Rename};
use crate::json::Json;
use crate::names::{old_root_name, quoted, MARKER_TEMP, OLD_ROOTS, RESTORE_MARKER};
use crate::render;
use crate::rollback;
use crate::session::{Session, Target};
use crate::subvolume::{self, Entry};

#[derive(Debug, Clone, Copy)]
pub struct RestoreOptions {
    /// Say what would be done and change nothing (the session is read-only).
    pub dry_run: bool,
    /// With `dry_run`: as JSON.
    pub json: bool,
}

/// What a restore is about to do, from the checks.
struct Restore {
    /// `old_roots/NAME`, and the directory `old_roots/` open.
    old_path: PathBuf,
    dir: OwnedFd,
    /// The id of `old_roots/NAME`, the root to be.
    restored: u64,
    /// The id of `root` now, if there is one: it is kept as an old root.
    current: Option<u64>,
    /// The default subvolume now, and whether it follows `root` (then it moves too).
    default: u64,
    default_follows: bool,
    /// The name the replaced root gets in `old_roots/` (from its creation time).
    kept_as: Option<OsString>,
}

/// How far a restore got, so that an error can say what is on the disk.
#[derive(Debug, Clone, Copy)]
enum Reached {
    Nothing,
    /// The marker for this id may be on the disk; nothing was exchanged.
    Marker(u64),
    /// `old_roots/NAME` was moved to `root`; `replaced` (if there was a root) is at
    /// `old_roots/NAME`. Not committed yet.
    Exchanged {
        restored: u64,
        replaced: Option<u64>,
    },
    /// The same, committed.
    Committed {
        restored: u64,
        replaced: Option<u64>,
    },
}

/// `btrfs-rollback restore NAME` in a session opened for it (read-only for a dry run). `name`
/// must be a single path component (the command line checks it).
pub fn restore(
    session: &Session,
    target: &Target,
    options: &RestoreOptions,
    name: &OsStr,
) -> Result<(), Failure> {
    let names = &target.names;
    let old_path = Path::new(OLD_ROOTS).join(name);
    let (root, old, device) = (
        quoted(&names.root),
        quoted(&old_path),
        target.device.display(),
    );
    log::info!(
        "{} {old} as {root} on {}",
        if options.dry_run {
            "dry run: would restore"
        } else {
            "restoring"
        },
        session.described()
    );
    let not_changed = |e: anyhow::Error| {
        Failure::new(Disk::Untouched, e)
            .state(format!("{root} and {old} on {device} were not changed"))
    };
    let plan = look(session, target, name).map_err(not_changed)?;
    if options.dry_run {
        if options.json {
            let doc = plan.json(session, target).map_err(not_changed)?;
            print!("{}", doc.to_string_pretty());
        } else {
            print!(
                "dry run, nothing changed; a restore would:\n{}",
                plan.describe(target)
            );
        }
        return Ok(());
    }
    let mut reached = Reached::Nothing;
    let Err(e) = act(session, target, name, &plan, &mut reached) else {
        return Ok(());
    };
    let replaced_at = |replaced: Option<u64>| match replaced {
        Some(id) => format!("the replaced root (ID {id}) is {old}"),
        None => "there was no root to replace".to_string(),
    };
    Err(match reached {
        Reached::Nothing => not_changed(e),
        Reached::Marker(id) => not_changed(e).state(format!(
            "{root} and {old} on {device} were not changed; a restore marker for ID {id} may be \
             left in the top-level volume, which the next run ignores and removes ({root} is \
             not ID {id})"
        )),
        Reached::Exchanged { restored, replaced } => {
            Failure::new(Disk::Exchanged, e).state(format!(
                "{old} (ID {restored}) was already moved to {root} on {device}, not yet \
                 committed: after a reboot {root} is either the restored root (kept once by the \
                 next run) or the one it replaced; {}",
                replaced_at(replaced)
            ))
        }
        Reached::Committed { restored, replaced } => Failure::new(Disk::RestoredRootInPlace, e)
            .state(format!(
                "the restore itself is done and committed: {root} on {device} is ID {restored} \
                 and the next run keeps it once; {}",
                replaced_at(replaced)
            )),
    })
}

/// The checks: `old_roots/NAME` is a writable subvolume, `root` a subvolume or missing.
fn look(session: &Session, target: &Target, name: &OsStr) -> Result<Restore> {
    let fs = session.fd();
    let names = &target.names;
    let old_path = Path::new(OLD_ROOTS).join(name);
    // Opened without following a symbolic link: old_roots/ is where kept roots are, nothing else.
    let dir = subvolume::open_dir(fs, OLD_ROOTS).with_context(|| {
        format!(
            "cannot open the directory {OLD_ROOTS:?} in the top-level volume (a symbolic link \
             is not followed); `btrfs-rollback list` shows the kept old roots"
        )
    })?;
    let restored = match subvolume::entry(dir.as_fd(), name)? {
        Entry::Subvolume {
            readonly: false,
            id,
        } => id,
        Entry::Subvolume { readonly: true, .. } => bail!(
            "{} is read-only and could not serve as a root; make it writable with \
             `btrfs property set -ts <top-level>/{} ro false` first",
            quoted(&old_path),
            old_path.display()
        ),
        Entry::Missing => bail!(
            "there is no old root {}; `btrfs-rollback list` shows the kept old roots",
            quoted(&old_path)
        ),
        Entry::Other(what) => bail!("{} is {what}, not a kept old root", quoted(&old_path)),
    };
    let current = match subvolume::entry(fs, &names.root)? {
        Entry::Subvolume { id, .. } => Some(id),
        Entry::Missing => None,
        Entry::Other(what) => bail!("{} is {what}, not a subvolume", quoted(&names.root)),
    };
    let default = subvolume::default_id(fs).context("cannot read the default subvolume")?;
    // Unlike `run`, restore deletes nothing: the exchange only renames, and whatever has
    // `root` mounted (the running system, as a rule) keeps the same subvolume, which is kept
    // as an old root. That is the way to restore from a running system, so only say so.
    match session.top().mounts_inside(&names.root) {
        Ok(mounted) if mounted.is_empty() => {}
        Ok(mounted) => log::warn!(
            "{} is mounted at {}: whatever runs there goes on in the same subvolume until it \
             stops, and what it writes from now on lands in the replaced root, kept under {:?}, \
             not in the restored one; reboot soon",
            quoted(&names.root),
            mounted.join(", "),
            OLD_ROOTS
        ),
        Err(e) => log::warn!(
            "cannot tell whether {} is mounted ({e:#})",
            quoted(&names.root)
        ),
    }
    let kept_as = match current {
        Some(id) => {
            let fd = subvolume::expect(fs, &names.root, id)?;
            let created = ioctl::get_subvol_info(fd.as_fd())
                .with_context(|| {
                    format!("cannot read the creation time of {}", quoted(&names.root))
                })?
                .otime;
            let taken = subvolume::names_with_prefix(dir.as_fd(), OsStr::new(""))?;
            Some(old_root_name(created, &taken))
        }
        None => None,
    };
    Ok(Restore {
        old_path,
        dir,
        restored,
        current,
        default,
        default_follows: current == Some(default),
        kept_as,
    })
}

impl Restore {
    /// The steps in words, one a line, for `--dry-run`.
    fn describe(&self, target: &Target) -> String {
        let (root, old, id) = (
            quoted(&target.names.root),
            quoted(&self.old_path),
            self.restored,
        );
        let mut out = format!(
            "  write the restore marker {RESTORE_MARKER:?} (ID {id}), so that the next run \
             keeps {old} as {root} once\n"
        );
        let default = if self.default_follows {
            format!(
                ", and make it the default subvolume (now ID {})",
                self.default
            )
        } else {
            String::new()
        };
        match (self.current, &self.kept_as) {
            (Some(current), Some(kept_as)) => {
                out += &format!(
                    "  exchange {old} (ID {id}) with {root} (ID {current}){default}, and commit\n"
                );
                out += &format!(
                    "  keep the replaced root (ID {current}) as {}\n",
                    quoted(&Path::new(OLD_ROOTS).join(kept_as))
                );
            }
            _ => {
                out += &format!(
                    "  move {old} (ID {id}) to {root} (there is no {root}){default}, and commit\n"
                )
            }
        }
        out
    }

    /// `restore NAME --dry-run --json`: the `restore` document of docs/json.md, the old root
    /// as `list` shows it, and where the replaced root would be kept.
    fn json(&self, session: &Session, target: &Target) -> Result<Json> {
        let names = &target.names;
        let state = inspect(session.top(), names)?;
        let old = state
            .old_roots
            .iter()
            .find(|o| o.id == self.restored)
            .with_context(|| format!("cannot read {} again", quoted(&self.old_path)))?;
        let replaced = match (self.current, &self.kept_as) {
            (Some(id), Some(kept_as)) => Json::Object(vec![
                ("id", Json::id(id)),
                ("name", Json::os(kept_as)),
                ("path", Json::path(&Path::new(OLD_ROOTS).join(kept_as))),
            ]),
            _ => Json::Null,
        };
        Ok(render::old_root_document(
            "restore",
            &target.device,
            session.described(),
            names,
            &state,
            old,
            vec![
                ("default_id", Json::id(self.default)),
                ("default_follows", Json::Bool(self.default_follows)),
                ("replaced", replaced),
            ],
        ))
    }
}

/// Steps 2-4, recording in `reached` how far they got.
fn act(
    session: &Session,
    target: &Target,
    name: &OsStr,
    plan: &Restore,
    reached: &mut Reached,
) -> Result<()> {
    let fs = session.fd();
    let names = &target.names;
    let (old_path, dir, restored, current) = (
        &plan.old_path,
        plan.dir.as_fd(),
        plan.restored,
        plan.current,
    );
    *reached = Reached::Marker(restored);
    write_marker(fs, restored)?;
    let exchanged = exchange(
        fs,
        dir,
        name,
        &names.root,
        restored,
        current.is_some(),
        plan.default_follows,
    );
    match exchanged {
        Ok(()) => {}
        Err(exchange::Failed::NotDone(e)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot {} {} {} {} (renameat2)",
                if current.is_some() {
                    "exchange"
                } else {
                    "move"
                },
                quoted(old_path),
                if current.is_some() { "with" } else { "to" },
                quoted(&names.root)
            )))
        }
        Err(exchange::Failed::Uncommitted(e)) => {
            *reached = Reached::Exchanged {
                restored,
                replaced: current,
            };
            return Err(e);
        }
    }
    *reached = Reached::Committed {
        restored,
        replaced: current,
    };
    let (Some(current), Some(new_name)) = (current, &plan.kept_as) else {
        log::info!(
            "done: {} (ID {restored}) is {} again; the next run keeps it once",
            quoted(old_path),
            quoted(&names.root)
        );
        return Ok(());
    };
    // The replaced root now sits at old_roots/NAME: give it its own name.
    let replaced = subvolume::expect(dir, name, current)?;
    if let Err(e) = rollback::mark_retired(replaced.as_fd(), old_path.as_os_str()) {
        log::warn!("{e:#}; retention will never prune it");
    }
    let kept_as = match ioctl::renameat2(dir, name, dir, new_name.as_os_str(), Rename::NoReplace) {
        Ok(()) => {
            ioctl::sync(fs).with_context(|| {
                format!(
                    "cannot commit the rename of the replaced root to {}",
                    quoted(&Path::new(OLD_ROOTS).join(new_name))
                )
            })?;
            Path::new(OLD_ROOTS).join(new_name)
        }
        Err(e) => {
            log::warn!(
                "cannot rename the replaced root to {} ({e}); it stays as {}",
                quoted(new_name),
                quoted(old_path)
            );
            old_path.clone()
        }
    };
    log::info!(
        "done: {} (ID {restored}) is {} now and the next run keeps it once; the replaced root \
         (ID {current}) is kept as {}",
        quoted(old_path),
        quoted(&names.root),
        quoted(&kept_as)
    );
    Ok(())
}

/// Write the restore marker (the id to keep) durably before anything is exchanged: to a
/// temporary name created exclusively (never an existing file, never through a symbolic
/// link), then renamed over the marker's name, which replaces whatever is there (a link
/// itself, never what it points to); a directory there is refused.
fn write_marker(fs: BorrowedFd<'_>, id: u64) -> Result<()> {
    match unlinkat(fs, MARKER_TEMP, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(e).context(format!(
                "cannot remove {MARKER_TEMP:?}, left in the top-level volume by an earlier \
                 restore; move it away"
            ))
        }
    }
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
    let fd = beneath::open(fs, Path::new(MARKER_TEMP), flags, 0o600)
        .with_context(|| format!("cannot create {MARKER_TEMP:?} in the top-level volume"))?;
    let mut file = std::fs::File::from(fd);
    let written = writeln!(file, "{id}").and_then(|()| file.sync_all());
    let renamed = written
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(nix::fcntl::renameat(fs, MARKER_TEMP, fs, RESTORE_MARKER)?));
    if let Err(e) = renamed {
        if let Err(e) = unlinkat(fs, MARKER_TEMP, UnlinkatFlags::NoRemoveDir) {
            log::warn!("cannot remove {MARKER_TEMP:?} again ({e}); the next restore replaces it");
        }
        return Err(e).context(format!(
            "cannot write the restore marker {RESTORE_MARKER:?} in the top-level volume (if it \
             is a directory, move it away)"
        ));
    }
    ioctl::sync(fs).context("cannot commit the restore marker")?;
    Ok(())
}
