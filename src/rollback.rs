//! The rollback itself: look, plan, then act in the one order that keeps a bootable `root`.
//!
//! 1. Every check first (`plan.rs`); a refusal changes nothing.
//! 2. A leftover of an interrupted run under the temporary name is renamed to `<temp>.<id>`.
//!    The temporary name only ever holds a fresh snapshot not yet swapped in, or an old root
//!    already swapped out: both are meant to go, but deleting them waits until after the swap,
//!    so that something undeletable cannot block the rollback. `root` is not touched.
//! 3. The blank is snapshotted under the temporary name (the kernel commits snapshot creation),
//!    then `renameat2(RENAME_EXCHANGE)` swaps it with `root` in one transaction (with the new
//!    default subvolume, if the default follows `root` or is nested in it), then
//!    BTRFS_IOC_SYNC commits. A power cut before the commit leaves the old `root`, after it
//!    the fresh one: at no instant is there no `root`. `chattr +i`/`+a` on either top
//!    directory (which forbids the rename) is cleared first.
//! 4. The old root, now under the temporary name, is deleted children first, then leftovers
//!    of earlier runs, then committed (`erase.rs`: any depth, flags, quotas, the default).
//!    Every step after the swap runs even if an earlier one failed, and every subvolume that
//!    can be deleted is; a cut here leaves a leftover for the next run; what could not be
//!    deleted is exit status 3, named by path: the fresh root is in place.
//!
//! ## A full filesystem (ENOSPC, or EDQUOT from a qgroup)
//!
//! Subvolume deletion may use the global block reserve, renames and snapshots may not, so on a
//! filesystem whose metadata is full the exchange fails. Then the run makes room with what it
//! deletes anyway, least wanted first, retrying the swap after each stage and waiting for the
//! kernel's cleaner to free the space (`swap_when_full`): first the leftovers of earlier runs
//! and old roots past the limits (a leftover that cannot even be renamed aside is deleted
//! instead). Then it decides, before touching `root`, whether replacing `root` is sure to make
//! room: ENOSPC (not a qgroup's EDQUOT, which would refuse the new root too) and `root` with
//! everything nested in it holds at least half of all subvolumes' tree bytes and at least
//! 1 MiB (`erase::deleting_makes_room`). If not (the space is held outside, say a full
//! `persist`), the run stops with exit 1, `root` untouched with all that is nested in it, and
//! names where the space is. If so, it deletes what is nested in `root`, tries the swap again,
//! and as the last resort deletes the old `root` itself (a following default parked at the
//! blank), commits, and snapshots the blank as `root`. `CreateRoot` on a full filesystem
//! deletes leftovers and old roots past the limits first.
//!
//! A failure after `renameat2(RENAME_EXCHANGE)` returned (the default, the commit) is
//! `SwapFailed::Exchanged`: never retried, never sent to `swap_when_full`, exit status 3 with
//! the disk's state named (after a reboot `root` is the old or the fresh subvolume; the next
//! run handles both).
//!
//! **Invariant:** `root` is only ever removed by the exchange, except in that last resort,
//! where the instants between the commit of its deletion and the commit of its replacement
//! (logged at warning level, "NO root") are the only ones without a `root`; a power cut there
//! is repaired by the next run, which finds `root` missing, creates it from the blank and, as
//! the default is at the blank, makes it the default again (a default of 5 is never moved).
//! Nothing nested in `root` is deleted before the swap unless the run has decided that `root`
//! holds the space, and from then on it replaces `root` or says at error level what it
//! deleted. Nothing outside `root`, its leftovers and `old_roots/` is deleted at any stage, and
//! the lines the full filesystem refuses to the log file are kept and written once there is
//! room.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::renameat;

use crate::clock;
use crate::erase::{self, errno_of, Eraser};
use crate::exchange::{self, exchange};
use crate::failure::{Disk, Failure};
use crate::inspect::inspect;
use crate::ioctl::{self, Errno, Rename};
use crate::logging;
use crate::names::{aside_name, count, quoted, Names, OLD_ROOTS, RESTORE_MARKER, RETIRED_XATTR};
pub use crate::plan::Retention;
use crate::plan::{self, OldRoot, Plan, Step};
use crate::session::{Session, Target};
use crate::subvolume::{self, Entry};

/// How many lines of the plan go to the log file.
const PLAN_LINES: usize = 60;

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Go on even if `root` is mounted somewhere (see `TopLevel::check_not_in_use`).
    pub force_mounted: bool,
    pub dry_run: bool,
    /// With `dry_run`: the plan as JSON.
    pub json: bool,
    pub retention: Retention,
}

/// `btrfs-rollback run`, in a session opened for it (read-only for a dry run).
pub fn run(session: &Session, target: &Target, options: &RunOptions) -> Result<(), Failure> {
    let (names, dry_run) = (&target.names, options.dry_run);
    let top = session.top();
    log::info!(
        "{} {} to {} on {} (version {})",
        if dry_run {
            "dry run: would roll back"
        } else {
            "rolling back"
        },
        quoted(&names.root),
        quoted(&names.blank),
        session.described(),
        env!("CARGO_PKG_VERSION"),
    );
    let not_changed = |e: anyhow::Error| {
        Failure::new(Disk::Untouched, e).state(format!(
            "{} on {} was not changed",
            quoted(&names.root),
            target.device.display()
        ))
    };
    match top.check_not_in_use(&names.root, options.force_mounted, "roll back") {
        Err(e) if dry_run => log::warn!("a run would refuse: {e:#}"),
        other => other.map_err(not_changed)?,
    }
    let state = inspect(top, names).map_err(not_changed)?;
    let plan = plan::plan(names, &state, &options.retention, clock::now())
        .context("refusing to roll back")
        .map_err(not_changed)?;
    for warning in &plan.warnings {
        log::warn!("{warning}");
    }
    if dry_run && options.json {
        let doc =
            crate::render::dry_run_json(&target.device, session.described(), names, &state, &plan);
        print!("{}", doc.to_string_pretty());
        return Ok(());
    }
    if dry_run {
        print!(
            "dry run, nothing changed; a run would:\n{}",
            plan.describe(names)
        );
        return Ok(());
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
    execute(session.fd(), names, &plan, &target.device).map_err(|f| match f {
        Stop::Before(e) => not_changed(e),
        Stop::Failed(f) => f,
    })
}

/// Why `execute` stopped.
enum Stop {
    /// Before anything that matters changed: `root` is as it was.
    Before(anyhow::Error),
    /// The failure says what state the disk is in.
    Failed(Failure),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Stop {
        Stop::Before(e)
    }
}

fn execute(fs: BorrowedFd<'_>, names: &Names, plan: &Plan, device: &Path) -> Result<(), Stop> {
    let start = Instant::now();
    // Set once a fresh `root` is committed: from then on a failure is a cleanup failure, and
    // the remaining steps still run (what can be deleted is deleted).
    let mut fresh: Option<u64> = None;
    let mut old_went = String::new();
    let mut failures: Vec<anyhow::Error> = Vec::new();
    let mut kept_restored = false;
    // Steps already done out of order, to make room on a full filesystem.
    let mut done = vec![false; plan.steps.len()];
    for (i, step) in plan.steps.iter().enumerate() {
        if done[i] {
            continue;
        }
        // Before the swap the default stays where it is; after it, the fresh root takes it.
        let eraser = Eraser {
            fs,
            fallback_default: fresh.unwrap_or(subvolume::TOP_LEVEL),
        };
        let result = match step {
            Step::KeepRestored { id } => {
                remove_restore_marker(fs)?;
                // The restored root is the one in place: later failures are cleanup failures.
                fresh = Some(*id);
                kept_restored = true;
                Ok(())
            }
            Step::ClearRestoreMarker => remove_restore_marker(fs),
            Step::DefaultToRoot => default_to_root(fs, names),
            Step::SetAside { id } => match set_aside(fs, names, *id) {
                Err(e) if full(&e) => {
                    // A full filesystem refuses the rename: delete the leftover now instead
                    // of after the swap (it is meant to go; `root` is not touched).
                    log::warn!(
                        "{e:#}: the filesystem is full; deleting {} (ID {id}) now instead",
                        quoted(&names.temp)
                    );
                    let aside = aside_name(names, *id);
                    for (j, later) in plan.steps.iter().enumerate() {
                        match later {
                            Step::RemoveLeftover { name, .. } if *name == aside => done[j] = true,
                            Step::KeepOld { from, .. } if *from == aside => done[j] = true,
                            _ => {}
                        }
                    }
                    eraser.delete_expected(&names.temp, *id).map(drop)
                }
                result => result,
            },
            Step::CreateRoot => match create_root_making_room(fs, names, plan, &mut done) {
                Ok(id) => {
                    fresh = Some(id);
                    logging::sync_file();
                    Ok(())
                }
                // There was no `root` before the run, and there still is none: not "untouched".
                Err(e) => {
                    return Err(Stop::Failed(Failure::new(Disk::NoRoot, e).state(format!(
                        "there is no {} on {}; the next run creates it from {} (free space \
                         there if it is full)",
                        quoted(&names.root),
                        device.display(),
                        quoted(&names.blank)
                    ))))
                }
            },
            Step::Swap {
                old,
                default_follows,
            } => {
                let swapped = match swap(fs, names, *old, *default_follows) {
                    // Only a failure before the exchange: `SwapFailed::Exchanged` never goes
                    // here, whatever its errno (`root` may be the fresh subvolume already).
                    Err(SwapFailed::Before(e)) if full(&e) => {
                        match swap_when_full(fs, names, plan, &mut done, *old, *default_follows, e)
                        {
                            // The message says what state `root` is in (and what, if
                            // anything, was deleted in it to make room).
                            Err(SwapFailed::Before(e)) => {
                                return Err(Stop::Failed(Failure::new(Disk::Untouched, e)))
                            }
                            other => other,
                        }
                    }
                    Ok(new) => Ok(Swapped {
                        new,
                        nested_deleted: 0,
                        old_deleted_first: false,
                    }),
                    Err(e) => Err(e),
                };
                match swapped {
                    Ok(s) => {
                        fresh = Some(s.new);
                        logging::sync_file();
                        if s.old_deleted_first {
                            let kept = plan.steps.iter().any(
                                |s| matches!(s, Step::KeepOld { from, .. } if *from == names.temp),
                            );
                            old_went = format!(
                                "; the old root (ID {old}) was DELETED BEFORE its replacement \
                                 existed, with {}, to make room on the full filesystem{}",
                                count(s.nested_deleted, "nested subvolume"),
                                if kept {
                                    " (retention could not keep it: there was no room)"
                                } else {
                                    ""
                                }
                            );
                        }
                        Ok(())
                    }
                    // Nothing was changed (`run` says so).
                    Err(SwapFailed::Before(e)) => Err(e),
                    Err(SwapFailed::NestedDeleted(e)) => {
                        return Err(Stop::Failed(Failure::new(Disk::NestedDeleted, e)))
                    }
                    Err(SwapFailed::NoRoot(e)) => {
                        return Err(Stop::Failed(Failure::new(Disk::NoRoot, e)))
                    }
                    Err(SwapFailed::Exchanged { new, error }) => {
                        return Err(Stop::Failed(Failure::new(Disk::Exchanged, error).state(
                            format!(
                                "{root} was exchanged with the fresh snapshot (ID {new}), but \
                                 committing that failed, so it is not known what is on the \
                                 disk: after a reboot {root} is either the old root (ID {old}) \
                                 or the fresh subvolume, and the next run handles both (the \
                                 other one is left under {temp} and deleted then); nothing more \
                                 is done now",
                                root = quoted(&names.root),
                                temp = quoted(&names.temp),
                            ),
                        )));
                    }
                }
            }
            Step::DeleteOld { id, nested } => eraser
                .delete_walked(&names.temp, *id, nested, Path::new(&names.root))
                .map(|nested| {
                    old_went = format!(
                        "; deleted the old root (ID {id}) and {}",
                        count(nested, "nested subvolume")
                    )
                }),
            Step::RemoveLeftover { name, id, .. } => {
                eraser.delete_expected(name, *id).map(|nested| {
                    log::info!(
                        "deleted {} (ID {id}), left over from an earlier run, with {}",
                        quoted(name),
                        count(nested, "nested subvolume")
                    );
                })
            }
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
            Step::PruneOld { old } => prune_old(&eraser, old),
        };
        if let Err(e) = result {
            if fresh.is_none() {
                return Err(Stop::Before(e));
            }
            // The fresh root is in place: go on with the other steps, report all at the end.
            failures.push(e);
        }
    }
    let new = fresh.context("internal error: the plan left no fresh root")?;
    if !failures.is_empty() {
        let what: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
        let (disk, which) = if kept_restored {
            (Disk::RestoredRootInPlace, "restored")
        } else {
            (Disk::FreshRootInPlace, "fresh")
        };
        return Err(Stop::Failed(Failure::new(
            disk,
            anyhow::anyhow!(
                "the {which} {} (ID {new}) on {} is in place and committed, but not everything \
                 of the old one is gone: {}; what is left stays in the top-level volume under {} \
                 (or {}.<ID>), outside the running system, and the next run tries again",
                quoted(&names.root),
                device.display(),
                what.join("; "),
                quoted(&names.temp),
                quoted(&names.temp),
            ),
        )));
    }
    if kept_restored {
        log::info!(
            "done: kept {} (ID {new}) this once, as `btrfs-rollback restore` asked; the next \
             boot rolls back again",
            quoted(&names.root)
        );
        return Ok(());
    }
    log::info!(
        "done: {} is a fresh snapshot of {} (ID {new}){old_went} in {:.2} s",
        quoted(&names.root),
        quoted(&names.blank),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether an error says the filesystem (or a qgroup) is out of space.
fn full(e: &anyhow::Error) -> bool {
    matches!(errno_of(e), Some(Errno::ENOSPC | Errno::EDQUOT))
}

/// How long to wait for the kernel to free the space of deleted subvolumes.
const CLEANER_WAIT: Duration = Duration::from_secs(120);

/// A swap that went through.
#[derive(Debug)]
struct Swapped {
    /// The fresh root's id, committed.
    new: u64,
    /// How many subvolumes nested in the old root were deleted before the swap.
    nested_deleted: usize,
    /// The last resort was taken: the old root was deleted before its replacement existed.
    old_deleted_first: bool,
}

/// Why a swap did not go through, by what `root` is now.
#[derive(Debug)]
enum SwapFailed {
    /// `root` is the old subvolume. Its message says what, if anything, was deleted in it.
    Before(anyhow::Error),
    /// `renameat2(RENAME_EXCHANGE)` returned: in this boot `root` is the fresh snapshot, but
    /// a later step (the default, the commit) failed, so what is on the disk is not known.
    /// Never retried, never sent to [`swap_when_full`].
    Exchanged { new: u64, error: anyhow::Error },
    /// `root` is the old subvolume, but what was nested in it was deleted to make room.
    NestedDeleted(anyhow::Error),
    /// The last resort deleted the old root and no fresh one could be made: NO `root`.
    NoRoot(anyhow::Error),
}

/// The swap failed after `nested` subvolumes in the old root were deleted to make room (or
/// none: then the old root is untouched).
fn nested_deleted(
    e: anyhow::Error,
    root: &impl std::fmt::Display,
    old: u64,
    nested: usize,
) -> SwapFailed {
    if nested == 0 {
        return SwapFailed::Before(e.context(format!(
            "{root} (ID {old}) is still the old root, untouched"
        )));
    }
    SwapFailed::NestedDeleted(e.context(format!(
        "{root} (ID {old}) is still the old root, but the {} nested in it {} DELETED to make \
         room",
        count(nested, "subvolume"),
        if nested == 1 { "was" } else { "were" }
    )))
}

impl From<anyhow::Error> for SwapFailed {
    fn from(e: anyhow::Error) -> SwapFailed {
        SwapFailed::Before(e)
    }
}

/// The swap failed because the filesystem is full. Make room, in stages, and swap.
///
/// 1. Delete the leftovers of earlier runs and old roots past the retention limits (the
///    rollback deletes them anyway; `root` is not touched). Wait for the kernel to free
///    their space, and try the swap again.
/// 2. Decide whether deleting `root`'s tree is sure to make room: only on ENOSPC (a qgroup
///    limit, EDQUOT, would refuse the new root as well) and only if `root` with everything
///    nested in it holds at least half of the tree bytes of all subvolumes
///    ([`erase::deleting_makes_room`]). If not, the space is held outside `root` (a full
///    `persist`): stop, with `root` and everything nested in it untouched.
/// 3. Delete what is nested in `root`, wait, try the swap again.
/// 4. The last resort: delete the old `root` itself (the default, if it follows `root`,
///    moves to the blank meanwhile, so that the next run moves it back), wait for its
///    space, and snapshot the blank as `root`. From the commit of that deletion until the
///    commit of the new `root` there is no `root`: a power cut then leaves none, and the next
///    run creates it from the blank (`CreateRoot`). Both instants are logged at warning level.
///
/// From stage 3 on it goes through to the end: once `root` lost anything, it is replaced.
fn swap_when_full(
    fs: BorrowedFd<'_>,
    names: &Names,
    plan: &Plan,
    done: &mut [bool],
    old: u64,
    default_follows: bool,
    e: anyhow::Error,
) -> Result<Swapped, SwapFailed> {
    let root = quoted(&names.root);
    log::warn!(
        "{e:#}: the filesystem is full; making room by deleting, before the swap, what the \
         rollback deletes anyway, least wanted first; {root} (ID {old}) itself stays"
    );
    let eraser = Eraser {
        fs,
        fallback_default: old,
    };
    // What the last attempt said: ENOSPC (the filesystem) or EDQUOT (a qgroup).
    let last = std::cell::Cell::new(errno_of(&e));
    let retry = |stage: &str, nested: usize| -> Result<Option<Swapped>, SwapFailed> {
        erase::wait_for_cleaner(fs, CLEANER_WAIT);
        match swap(fs, names, old, default_follows) {
            Ok(new) => {
                log::warn!("the swap worked after making room ({stage})");
                Ok(Some(Swapped {
                    new,
                    nested_deleted: nested,
                    old_deleted_first: false,
                }))
            }
            Err(SwapFailed::Before(e)) if full(&e) => {
                log::warn!("{e:#}: still full after {stage}");
                last.set(errno_of(&e));
                Ok(None)
            }
            Err(SwapFailed::Before(e)) => Err(nested_deleted(e, &root, old, nested)),
            Err(other) => Err(other),
        }
    };
    // 1. Leftovers of earlier runs and old roots past the limits.
    let mut freed = false;
    for (i, step) in plan.steps.iter().enumerate() {
        if done[i] {
            continue;
        }
        let result = match step {
            Step::RemoveLeftover { name, id, .. } => eraser.delete_expected(name, *id),
            Step::PruneOld { old } => prune_old(&eraser, old).map(|()| 0),
            _ => continue,
        };
        done[i] = true;
        freed = true;
        match result {
            Ok(_) => log::warn!("made room: {}", describe(step, names)),
            Err(e) => log::warn!("{e:#}; going on"),
        }
    }
    if freed {
        if let Some(s) = retry("deleting leftovers and old roots", 0)? {
            return Ok(s);
        }
    }

    // 2. Only go on if replacing `root` is sure to make room.
    let untouched = format!(
        "so the rollback did not happen: {root} (ID {old}) is untouched, with everything \
         nested in it, and boots as it is"
    );
    let last = last.get();
    if last != Some(Errno::ENOSPC) {
        return Err(SwapFailed::Before(anyhow::anyhow!(
            "a qgroup limit is full ({}) and deleting {root} would not lift it, {untouched}; \
             lift the limit (btrfs qgroup limit none) and run again",
            last.map_or("?", |e| e.desc())
        )));
    }
    let (held, total) = erase::tree_holds_the_space(fs, old, Path::new(&names.root))
        .map_err(|e| SwapFailed::Before(e.context(untouched.clone())))?;
    log::debug!(
        "{root} (ID {old}) with what is nested in it holds {held} bytes of tree blocks, all \
         subvolumes {total}"
    );
    if !erase::deleting_makes_room(held, total) {
        return Err(SwapFailed::Before(anyhow::anyhow!(
            "the filesystem is full (ENOSPC) and the space is held outside {root}: of the {} \
             MiB of metadata of all subvolumes, {root} (ID {old}) with what is nested in it \
             holds only {} MiB, so deleting it would not make room ({}, or file data), \
             {untouched}; free space outside {root} and run again",
            total >> 20,
            held >> 20,
            outside(fs, names, old)
        )));
    }

    // 3. What is nested in `root` (kept old roots lose it too: there is no room to keep it).
    // From here on `root` is replaced, whatever it takes.
    let nested = match eraser.delete_nested(old, Path::new(&names.root)) {
        Ok(n) => n,
        Err(e) => {
            log::warn!("{e:#}; going on");
            match e.downcast_ref::<erase::Leftovers>() {
                Some(l) => l.deleted,
                None => 0,
            }
        }
    };
    log::warn!(
        "made room: deleted {} nested in {root} (ID {old}), which holds the space",
        count(nested, "subvolume")
    );
    if let Some(s) = retry("deleting what was nested in the old root", nested)? {
        return Ok(s);
    }

    // 4. The last resort: the old root goes before its replacement exists.
    let blank = match subvolume::entry(fs, &names.blank) {
        Ok(Entry::Subvolume { id, .. }) => id,
        _ => subvolume::TOP_LEVEL,
    };
    log::warn!(
        "deleting the old {root} (ID {old}) before its replacement exists: the space is held by \
         its own files. Until the fresh {root} is committed, a power cut leaves NO {root}; the \
         next run creates it from {}",
        quoted(&names.blank)
    );
    logging::sync_file();
    // The default, if it follows `root`, waits at the blank: the next run moves it back (the
    // plan takes a default at the blank as following `root`).
    let eraser = Eraser {
        fs,
        fallback_default: blank,
    };
    if let Err(e) = eraser.delete_expected(&names.root, old) {
        let gone = !matches!(
            subvolume::entry(fs, &names.root),
            Ok(Entry::Subvolume { .. })
        );
        return Err(if gone {
            SwapFailed::NoRoot(e.context(format!(
                "NO {root} now: the next run creates it from the blank"
            )))
        } else {
            nested_deleted(e, &root, old, nested)
        });
    }
    log::warn!("the old {root} (ID {old}) is deleted and committed: there is NO {root} now");
    for (i, step) in plan.steps.iter().enumerate() {
        if matches!(step, Step::DeleteOld { .. } | Step::KeepOld { .. }) {
            // The old root is gone already (a kept one too: there was no room to keep it).
            done[i] = true;
        }
    }
    let deadline = Instant::now() + CLEANER_WAIT;
    let new = loop {
        erase::wait_for_cleaner(fs, Duration::from_secs(5));
        match create_root(fs, names) {
            Ok(id) => break id,
            Err(e) if full(&e) && Instant::now() < deadline => {
                log::warn!("{e:#}; waiting for the kernel to free the old root's space")
            }
            Err(e) => {
                return Err(SwapFailed::NoRoot(e.context(format!(
                    "NO {root} now: the old one is deleted and the fresh snapshot could not be \
                     made; the next run tries again"
                ))))
            }
        }
    };
    // Only a default that follows `root` was parked at the blank; any other stays.
    if default_follows {
        if let Err(e) = ioctl::set_default_subvol(fs, new).and_then(|()| ioctl::sync(fs)) {
            // The next run moves it (the plan takes a default at the blank as following root).
            log::error!(
                "the fresh {root} (ID {new}) is in place, but cannot be made the default \
                 subvolume ({e}); the default is still the blank (ID {blank}), and the next run \
                 moves it"
            );
        }
    }
    log::warn!("there is a {root} again: the fresh snapshot (ID {new}) is committed");
    Ok(Swapped {
        new,
        nested_deleted: nested,
        old_deleted_first: true,
    })
}

/// Where the metadata is, for a message: the top-level subvolumes other than `root` that
/// hold the most tree bytes.
fn outside(fs: BorrowedFd<'_>, names: &Names, root: u64) -> String {
    let Ok(children) = subvolume::children(fs, subvolume::TOP_LEVEL) else {
        return "held elsewhere".into();
    };
    let mut sizes: Vec<(u64, std::ffi::OsString, u64)> = children
        .into_iter()
        .filter(|(id, _, name)| *id != root && *name != names.root)
        .map(|(id, _, name)| {
            let b = erase::tree_bytes(fs, id).ok().flatten().unwrap_or(0);
            (b, name, id)
        })
        .collect();
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    let named: Vec<String> = sizes
        .iter()
        .take(3)
        .map(|(b, name, id)| format!("{} (ID {id}) holds {} MiB", quoted(name), b >> 20))
        .collect();
    if named.is_empty() {
        "held by the top level".into()
    } else {
        named.join(", ")
    }
}

/// `root` is missing: create it; on a full filesystem make room first with what the plan
/// deletes anyway (leftovers, old roots past the limits), wait for the kernel to free it and
/// try again.
fn create_root_making_room(
    fs: BorrowedFd<'_>,
    names: &Names,
    plan: &Plan,
    done: &mut [bool],
) -> Result<u64> {
    let e = match create_root(fs, names) {
        Err(e) if full(&e) => e,
        other => return other,
    };
    log::warn!(
        "{e:#}: the filesystem is full; making room by deleting leftovers and old roots past \
         the limits first"
    );
    let eraser = Eraser {
        fs,
        fallback_default: subvolume::TOP_LEVEL,
    };
    for (i, step) in plan.steps.iter().enumerate() {
        let result = match step {
            _ if done[i] => continue,
            Step::RemoveLeftover { name, id, .. } => eraser.delete_expected(name, *id),
            Step::PruneOld { old } => prune_old(&eraser, old).map(|()| 0),
            _ => continue,
        };
        done[i] = true;
        match result {
            Ok(_) => log::warn!("made room: {}", describe(step, names)),
            Err(e) => log::warn!("{e:#}; going on"),
        }
    }
    erase::wait_for_cleaner(fs, CLEANER_WAIT);
    create_root(fs, names).context(
        "still full after deleting leftovers and old roots: there is NO root; free space and \
         run again",
    )
}

/// One step in words (the plan's own description).
fn describe(step: &Step, names: &Names) -> String {
    let plan = Plan {
        steps: vec![step.clone()],
        warnings: Vec::new(),
    };
    plan.describe(names)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
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
    let now = clock::now().to_string();
    ioctl::set_xattr(fd, RETIRED_XATTR, now.as_bytes()).with_context(|| {
        format!(
            "cannot mark {} as an old root kept by btrfs-rollback ({RETIRED_XATTR})",
            quoted(path)
        )
    })
}

fn prune_old(eraser: &Eraser<'_>, old: &OldRoot) -> Result<()> {
    delete_old_root(eraser, old, "pruned")
}

/// Delete the kept old root `old` with everything nested in it (`prune` and `forget`), and
/// say so, `done` being the verb ("pruned").
pub fn delete_old_root(eraser: &Eraser<'_>, old: &OldRoot, done: &str) -> Result<()> {
    let path = old.path();
    let nested = eraser.delete_walked(path.as_os_str(), old.id, &old.nested, &path)?;
    log::info!(
        "{done} the old root {} (ID {}, created {}) with {}",
        quoted(&old.path()),
        old.id,
        clock::utc_text(old.created),
        count(nested, "nested subvolume")
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
/// transaction. Returns the fresh root's id once committed. Once the exchange has returned,
/// every failure is [`SwapFailed::Exchanged`]: `root` may be either subvolume on the disk.
fn swap(
    fs: BorrowedFd<'_>,
    names: &Names,
    old: u64,
    default_follows: bool,
) -> Result<u64, SwapFailed> {
    let new = subvolume::snapshot(fs, &names.blank, &names.temp)?;
    log::debug!(
        "snapshotted {} as {} (ID {new})",
        quoted(&names.blank),
        quoted(&names.temp)
    );
    let swap = || exchange(fs, fs, &names.temp, &names.root, new, true, default_follows);
    let mut exchanged = swap();
    let mut cleared = false;
    if matches!(exchanged, Err(exchange::Failed::NotDone(Errno::EPERM))) {
        // `chattr +i` (or `+a`) on the old root's top directory, or on the blank's (which its
        // snapshot inherits), forbids the rename. The old root is about to be erased and the
        // snapshot is ours: clear the flags and try once more.
        for name in [&names.root, &names.temp] {
            let fd = subvolume::open_dir(fs, name.as_os_str())?;
            cleared |= erase::clear_undeletable(fd.as_fd(), &quoted(name).to_string())?;
        }
        if cleared {
            exchanged = swap();
        }
    }
    let after = |error: anyhow::Error| SwapFailed::Exchanged { new, error };
    match exchanged {
        Ok(()) => {}
        Err(exchange::Failed::NotDone(e)) => {
            // `root` is untouched; take the unused snapshot away again.
            if ioctl::snap_destroy_by_id(fs, new).is_ok() {
                let _ = ioctl::sync(fs);
            }
            let flags = if cleared {
                " (its immutable/append-only flags were cleared for the exchange and stay \
                 cleared: set them again with chattr if they are wanted)"
            } else {
                ""
            };
            return Err(SwapFailed::Before(anyhow::Error::new(e).context(format!(
                "cannot exchange {} with {}{flags} (renameat2 RENAME_EXCHANGE)",
                quoted(&names.temp),
                quoted(&names.root)
            ))));
        }
        Err(exchange::Failed::Uncommitted(e)) => return Err(after(e)),
    }
    subvolume::expect(fs, &names.root, new).map_err(after)?;
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
    let aside = aside_name(names, id);
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
