//! `btrfs-rollback restore NAME`: make the kept old root `old_roots/NAME` the root for the next
//! boot, crash-safely.
//!
//! 1. Check: `old_roots/NAME` is a writable subvolume; `root` is a subvolume or missing.
//! 2. Write the restore marker (the id of `old_roots/NAME`) and commit, so that the next `run`
//!    keeps that subvolume as `root` once instead of rolling it back.
//! 3. Exchange `old_roots/NAME` with `root` (one transaction, with the default subvolume if it
//!    follows `root`) and commit. Before this commit a power cut leaves everything as it was
//!    (the marker then names a subvolume that is not `root`, and `run` ignores and removes it);
//!    after it, `root` is the restored one and the replaced root is kept as `old_roots/NAME`.
//! 4. Rename the replaced root to a name from its own creation time, and commit.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ioctl::{self, Rename};
use crate::logging::{self, LOG_FILE_CAP};
use crate::mount::TopLevel;
use crate::names::quoted;
use crate::plan::{old_root_name, OLD_ROOTS};
use crate::rollback::{self, Outcome, Target, RESTORE_MARKER};
use crate::subvolume::{self, Entry};

/// `name` must be a single path component (the command line checks it).
pub fn restore(target: &Target, name: &OsStr) -> Result<Outcome> {
    let names = &target.names;
    let (top, described) = rollback::open(target, false)?;
    let _lock = top
        .lock()
        .with_context(|| format!("{} is busy", target.device.display()))?;
    let _log = logging::attach_file(top.fd(), Path::new("rollback.log"), LOG_FILE_CAP)
        .map_err(|e| log::warn!("cannot write the log file rollback.log ({e}); going on"))
        .ok();
    let old_path = Path::new(OLD_ROOTS).join(name);
    log::info!(
        "restoring {} as {} on {described}",
        quoted(&old_path),
        quoted(&names.root)
    );
    let result = restore_on(&top, target, name);
    if let Err(e) = &result {
        log::error!(
            "{e:#}; {} and {} on {} were not changed",
            quoted(&names.root),
            quoted(&old_path),
            target.device.display()
        );
        return Ok(Outcome::Refused);
    }
    result
}

fn restore_on(top: &TopLevel, target: &Target, name: &OsStr) -> Result<Outcome> {
    let fs = top.fd();
    let names = &target.names;
    let old_path = Path::new(OLD_ROOTS).join(name);
    let restored = match subvolume::entry(fs, old_path.as_os_str())? {
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
    let default_follows = current.is_some_and(|id| subvolume::default_id(fs).ok() == Some(id));

    write_marker(top, restored)?;
    let dir = subvolume::open_dir(fs, OLD_ROOTS)?;
    let Some(current) = current else {
        ioctl::renameat2(
            dir.as_fd(),
            name,
            fs,
            names.root.as_os_str(),
            Rename::NoReplace,
        )
        .with_context(|| {
            format!(
                "cannot move {} to {}",
                quoted(&old_path),
                quoted(&names.root)
            )
        })?;
        ioctl::sync(fs).context("cannot commit the restored root")?;
        log::info!(
            "done: {} (ID {restored}) is {} again; the next run keeps it once",
            quoted(&old_path),
            quoted(&names.root)
        );
        return Ok(Outcome::RolledBack);
    };
    ioctl::renameat2(
        dir.as_fd(),
        name,
        fs,
        names.root.as_os_str(),
        Rename::Exchange,
    )
    .with_context(|| {
        format!(
            "cannot exchange {} with {} (renameat2 RENAME_EXCHANGE)",
            quoted(&old_path),
            quoted(&names.root)
        )
    })?;
    if default_follows {
        ioctl::set_default_subvol(fs, restored)
            .context("cannot make the restored root the default subvolume")?;
    }
    ioctl::sync(fs).with_context(|| {
        format!(
            "{} was exchanged with {}, but the commit failed: after a reboot either may be {}",
            quoted(&old_path),
            quoted(&names.root),
            quoted(&names.root)
        )
    })?;
    // The replaced root now sits at old_roots/NAME: give it its own name.
    let replaced = subvolume::expect(fs, &old_path, current)?;
    if let Err(e) = rollback::mark_retired(replaced.as_fd(), old_path.as_os_str()) {
        log::warn!("{e:#}; retention will never prune it");
    }
    let created = ioctl::get_subvol_info(replaced.as_fd())?.otime;
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
            ioctl::sync(fs).context("cannot commit the rename of the replaced root")?;
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

/// Write the restore marker (the id to keep) durably before anything is exchanged.
fn write_marker(top: &TopLevel, id: u64) -> Result<()> {
    let path = top.path().join(RESTORE_MARKER);
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("cannot write the restore marker {}", path.display()))?;
    writeln!(file, "{id}")?;
    file.sync_all()?;
    ioctl::sync(top.fd()).context("cannot commit the restore marker")?;
    Ok(())
}
