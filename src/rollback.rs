//! The rollback itself: look, plan, then act in the one order that keeps a bootable `root`.
//!
//! 1. Every check first (`plan.rs`); a refusal changes nothing.
//! 2. A leftover of an interrupted run is deleted. It sits under the temporary name, which
//!    only ever holds either a fresh snapshot not yet swapped in, or an old root already
//!    swapped out: both are meant to go. `root` is not touched.
//! 3. The blank is snapshotted under the temporary name (the kernel commits snapshot creation),
//!    then `renameat2(RENAME_EXCHANGE)` swaps it with `root` in one transaction, then
//!    BTRFS_IOC_SYNC commits. A power cut before the commit leaves the old `root`, after it
//!    the fresh one: at no instant is there no `root`.
//! 4. The old root, now under the temporary name, is deleted children first, then committed.
//!    A cut here leaves a leftover for step 2 of the next run.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{renameat2, RenameFlags};

use crate::device;
use crate::ioctl;
use crate::logging::{self, LOG_FILE_CAP};
use crate::mount::TopLevel;
use crate::names::{quoted, Names};
use crate::plan::{self, Plan, Slot, State, Step};
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
    /// Nothing was changed; the plan was printed.
    DryRun,
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

/// Read what the top-level volume holds.
pub fn inspect(top: &TopLevel, names: &Names) -> Result<State> {
    let fs = top.fd();
    let slot = |name: &OsStr| -> Result<Slot> {
        let entry = subvolume::entry(fs, name)?;
        let nested = match entry {
            Entry::Subvolume { id, .. } => subvolume::nested_post_order(fs, id, Path::new(name))?,
            _ => Vec::new(),
        };
        Ok(Slot { entry, nested })
    };
    Ok(State {
        root: slot(&names.root)?,
        blank: slot(&names.blank)?,
        temp: slot(&names.temp)?,
        default_id: subvolume::default_id(fs)?,
    })
}

/// `btrfs-rollback run`.
pub fn run(target: &Target, log_file: &Path, dry_run: bool) -> Result<Outcome> {
    let names = &target.names;
    let (top, described) = open(target, dry_run)?;
    let _lock = top.lock()?;
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
        "rolling back {} to {} on {described} (version {})",
        quoted(&names.root),
        quoted(&names.blank),
        env!("CARGO_PKG_VERSION"),
    );
    // Errors from here on are logged while the log file is still open.
    let result = inspect(&top, names).and_then(|state| {
        let plan = plan::plan(names, &state).context("refusing to roll back")?;
        for warning in &plan.warnings {
            log::warn!("{warning}");
        }
        if dry_run {
            print!(
                "dry run, nothing changed; a run would:\n{}",
                plan.describe(names)
            );
            return Ok(Outcome::DryRun);
        }
        for line in plan.describe(names).lines() {
            log::debug!("plan: {line}");
        }
        execute(&top, names, &plan)
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

fn execute(top: &TopLevel, names: &Names, plan: &Plan) -> Result<Outcome> {
    let fs = top.fd();
    let start = Instant::now();
    // Set once `root` is a fresh snapshot: from then on a failure is a cleanup failure.
    let mut fresh: Option<u64> = None;
    let mut deleted_old: Option<(u64, usize)> = None;
    for step in &plan.steps {
        let result = match step {
            Step::DefaultToRoot => default_to_root(top, names),
            Step::RemoveLeftover { id, .. } => delete_expected(top, &names.temp, *id).map(|n| {
                log::info!(
                    "removed {} (ID {id}), left over from an interrupted run, with {} nested subvolume(s)",
                    quoted(&names.temp),
                    n - 1
                );
            }),
            Step::CreateRoot => subvolume::snapshot(fs, &names.blank, &names.root)
                .and_then(|id| {
                    ioctl::sync(fs).context("cannot commit the new root")?;
                    log::info!(
                        "{} was missing: created it as a snapshot of {} (ID {id})",
                        quoted(&names.root),
                        quoted(&names.blank)
                    );
                    fresh = Some(id);
                    Ok(())
                }),
            Step::Swap { old } => swap(top, names, *old, &mut fresh),
            Step::DeleteOld { id, .. } => delete_expected(top, &names.temp, *id)
                .map(|n| deleted_old = Some((*id, n - 1))),
        };
        if let Err(e) = result {
            if fresh.is_some() {
                log::error!(
                    "{e:#}; the fresh {} is in place, the next run finishes the cleanup",
                    quoted(&names.root)
                );
                return Ok(Outcome::CleanupFailed);
            }
            return Err(e);
        }
    }
    let new = fresh.context("internal error: the plan left no fresh root")?;
    let old = match deleted_old {
        Some((id, nested)) => {
            format!("; deleted the old root (ID {id}) and {nested} nested subvolume(s)")
        }
        None => String::new(),
    };
    log::info!(
        "done: {} is a fresh snapshot of {} (ID {new}){old} in {:.2} s",
        quoted(&names.root),
        quoted(&names.blank),
        start.elapsed().as_secs_f64()
    );
    Ok(Outcome::RolledBack)
}

/// Snapshot the blank under the temporary name and exchange it with `root`, then commit.
fn swap(top: &TopLevel, names: &Names, old: u64, fresh: &mut Option<u64>) -> Result<()> {
    let fs = top.fd();
    let new = subvolume::snapshot(fs, &names.blank, &names.temp)?;
    log::debug!(
        "snapshotted {} as {} (ID {new})",
        quoted(&names.blank),
        quoted(&names.temp)
    );
    if let Err(e) = renameat2(
        fs,
        names.temp.as_os_str(),
        fs,
        names.root.as_os_str(),
        RenameFlags::RENAME_EXCHANGE,
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
    *fresh = Some(new);
    ioctl::sync(fs).with_context(|| {
        format!(
            "{} was exchanged with a fresh snapshot, but the commit failed",
            quoted(&names.root)
        )
    })?;
    match subvolume::entry(fs, &names.root)? {
        Entry::Subvolume { id, .. } if id == new => {}
        other => bail!(
            "after the exchange {} is {other:?}, expected subvolume {new}",
            quoted(&names.root)
        ),
    }
    log::debug!(
        "exchanged {} (now ID {new}) with the old root (ID {old}, now {}) and committed",
        quoted(&names.root),
        quoted(&names.temp)
    );
    Ok(())
}

/// Delete the tree under `name`, after checking that `name` is still subvolume `id`.
fn delete_expected(top: &TopLevel, name: &OsStr, id: u64) -> Result<usize> {
    match subvolume::entry(top.fd(), name)? {
        Entry::Subvolume { id: found, .. } if found == id => {}
        other => bail!(
            "{} is {other:?}, expected subvolume {id}; not deleting it",
            quoted(name)
        ),
    }
    subvolume::delete_tree(top.fd(), id, Path::new(name))
}

/// Make the subvolume now called `root` the default one.
fn default_to_root(top: &TopLevel, names: &Names) -> Result<()> {
    let fs = top.fd();
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
