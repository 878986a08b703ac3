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

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::beneath;
use crate::ioctl::{self, Rename};
use crate::logging::{self, LOG_FILE_CAP};
use crate::mount::TopLevel;
use crate::names::{old_root_name, quoted, MARKER_TEMP, OLD_ROOTS, RESTORE_MARKER};
use crate::rollback::{self, Outcome, Target};
use crate::subvolume::{self, Entry};

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The log file, as for `run`.
    pub log: PathBuf,
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

/// `name` must be a single path component (the command line checks it).
pub fn restore(target: &Target, options: &RestoreOptions, name: &OsStr) -> Result<Outcome> {
    let names = &target.names;
    let (top, described) = rollback::open(target, false)?;
    let _lock = top
        .lock()
        .with_context(|| format!("{} is busy", target.device.display()))?;
    // Declared after `top`, so it is closed before the volume is unmounted.
    let _log = match logging::attach_file(top.fd(), &options.log, LOG_FILE_CAP) {
        Ok(log) => Some(log),
        Err(e) => {
            log::warn!(
                "cannot write the log file {} on the top-level volume ({e}); going on without it",
                options.log.display()
            );
            None
        }
    };
    let old_path = Path::new(OLD_ROOTS).join(name);
    log::info!(
        "restoring {} as {} on {described}",
        quoted(&old_path),
        quoted(&names.root)
    );
    let mut reached = Reached::Nothing;
    let result = restore_on(&top, target, name, &mut reached);
    let Err(e) = result else {
        return result;
    };
    let (root, old, device) = (
        quoted(&names.root),
        quoted(&old_path),
        target.device.display(),
    );
    let replaced_at = |replaced: Option<u64>| match replaced {
        Some(id) => format!("the replaced root (ID {id}) is {old}"),
        None => "there was no root to replace".to_string(),
    };
    match reached {
        Reached::Nothing => {
            log::error!("{e:#}; {root} and {old} on {device} were not changed");
            Ok(Outcome::Refused)
        }
        Reached::Marker(id) => {
            log::error!(
                "{e:#}; {root} and {old} on {device} were not changed; a restore marker for ID \
                 {id} may be left in the top-level volume, which the next run ignores and \
                 removes ({root} is not ID {id})"
            );
            Ok(Outcome::Refused)
        }
        Reached::Exchanged { restored, replaced } => {
            log::error!(
                "{e:#}; {old} (ID {restored}) was already moved to {root} on {device}, not yet \
                 committed: after a reboot {root} is either the restored root (kept once by the \
                 next run) or the one it replaced; {}",
                replaced_at(replaced)
            );
            Ok(Outcome::CleanupFailed)
        }
        Reached::Committed { restored, replaced } => {
            log::error!(
                "{e:#}; the restore itself is done and committed: {root} on {device} is ID \
                 {restored} and the next run keeps it once; {}",
                replaced_at(replaced)
            );
            Ok(Outcome::CleanupFailed)
        }
    }
}

fn restore_on(
    top: &TopLevel,
    target: &Target,
    name: &OsStr,
    reached: &mut Reached,
) -> Result<Outcome> {
    let fs = top.fd();
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
    let default_follows = current == Some(default);
    // Unlike `run`, restore deletes nothing: the exchange only renames, and whatever has
    // `root` mounted (the running system, as a rule) keeps the same subvolume, which is kept
    // as an old root. That is the way to restore from a running system, so only say so.
    match top.mounts_inside(&names.root) {
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

    *reached = Reached::Marker(restored);
    write_marker(fs, restored)?;
    let how = if current.is_some() {
        Rename::Exchange
    } else {
        Rename::NoReplace
    };
    ioctl::renameat2(dir.as_fd(), name, fs, names.root.as_os_str(), how).with_context(|| {
        format!(
            "cannot {} {} {} {} (renameat2)",
            if current.is_some() {
                "exchange"
            } else {
                "move"
            },
            quoted(&old_path),
            if current.is_some() { "with" } else { "to" },
            quoted(&names.root)
        )
    })?;
    *reached = Reached::Exchanged {
        restored,
        replaced: current,
    };
    if default_follows {
        ioctl::set_default_subvol(fs, restored).with_context(|| {
            format!(
                "cannot make the restored root (ID {restored}) the default subvolume; it stays \
                 ID {default}, the replaced root"
            )
        })?;
    }
    ioctl::sync(fs).context("cannot commit the restore (BTRFS_IOC_SYNC)")?;
    *reached = Reached::Committed {
        restored,
        replaced: current,
    };
    let Some(current) = current else {
        log::info!(
            "done: {} (ID {restored}) is {} again; the next run keeps it once",
            quoted(&old_path),
            quoted(&names.root)
        );
        return Ok(Outcome::RolledBack);
    };
    // The replaced root now sits at old_roots/NAME: give it its own name.
    let replaced = subvolume::expect(dir.as_fd(), name, current)?;
    if let Err(e) = rollback::mark_retired(replaced.as_fd(), old_path.as_os_str()) {
        log::warn!("{e:#}; retention will never prune it");
    }
    let created = ioctl::get_subvol_info(replaced.as_fd())
        .with_context(|| format!("cannot read the creation time of {}", quoted(&old_path)))?
        .otime;
    let taken = subvolume::names_with_prefix(dir.as_fd(), OsStr::new(""))?;
    let new_name = old_root_name(created, &taken);
    let kept_as = match ioctl::renameat2(
        dir.as_fd(),
        name,
        dir.as_fd(),
        new_name.as_os_str(),
        Rename::NoReplace,
    ) {
        Ok(()) => {
            ioctl::sync(fs).with_context(|| {
                format!(
                    "cannot commit the rename of the replaced root to {}",
                    quoted(&Path::new(OLD_ROOTS).join(&new_name))
                )
            })?;
            Path::new(OLD_ROOTS).join(&new_name)
        }
        Err(e) => {
            log::warn!(
                "cannot rename the replaced root to {} ({e}); it stays as {}",
                quoted(&new_name),
                quoted(&old_path)
            );
            old_path.clone()
        }
    };
    log::info!(
        "done: {} (ID {restored}) is {} now and the next run keeps it once; the replaced root \
         (ID {current}) is kept as {}",
        quoted(&old_path),
        quoted(&names.root),
        quoted(&kept_as)
    );
    Ok(Outcome::RolledBack)
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

/// Read the restore marker: the id of the root `restore` put in place, `None` if there is no
/// marker. Opened without following a symbolic link and without blocking. Anything else than
/// a regular file holding an id is stale: a link, FIFO or socket is logged and reads as 0 (no
/// root's id), so the run removes it; a directory is logged and ignored (left alone).
pub fn read_marker(fs: BorrowedFd<'_>) -> Result<Option<u64>> {
    let path = Path::new(RESTORE_MARKER);
    let stale = |what: &str| {
        log::warn!(
            "{RESTORE_MARKER:?} in the top-level volume is {what}, not a marker written by \
             `btrfs-rollback restore`: ignoring it as stale"
        );
    };
    let fd = match beneath::open(fs, path, OFlag::O_RDONLY, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            stale("a symbolic link (not followed)");
            return Ok(Some(0));
        }
        Err(Errno::ENXIO) => {
            stale("a socket");
            return Ok(Some(0));
        }
        // A device node (the top level is mounted nodev: EACCES) or anything else that cannot
        // be opened is not a marker either; refusing would block every boot.
        Err(e) => {
            stale(&format!(
                "something that cannot be opened ({e}; a device node?)"
            ));
            return Ok(Some(0));
        }
    };
    let what = beneath::kind(fd.as_fd()).context(format!("cannot stat {RESTORE_MARKER:?}"))?;
    if what == "a directory" {
        stale("a directory; it is left alone, remove it by hand");
        return Ok(None);
    }
    if what != "a regular file" {
        stale(what);
        return Ok(Some(0));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(64)
        .read_to_end(&mut bytes)
        .context(format!("cannot read {RESTORE_MARKER:?}"))?;
    // Anything unreadable as an id is stale: 0 is never a root's id.
    let text = String::from_utf8_lossy(&bytes);
    Ok(Some(text.trim().parse().unwrap_or(0)))
}
