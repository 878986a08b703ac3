//! `btrfs-rollback forget NAME`: delete the kept old root `old_roots/NAME` with everything
//! nested in it, with the deletion `run` prunes old roots with (`erase.rs`: any depth,
//! read-only flags, `chattr +i`, quotas). `btrfs subvolume delete` refuses a subvolume with
//! nested ones; this does not.
//!
//! Refused, changing nothing: a name that is not a subvolume directly in `old_roots/`, an old
//! root that is mounted on this system (the running system's root after a live `restore`),
//! and one that is or holds the default subvolume. `--dry-run` names what would go, by path
//! and id, on a read-only mount.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};

use crate::erase::{Eraser, Leftovers};
use crate::failure::{Disk, Failure};
use crate::inspect::inspect;
use crate::json::Json;
use crate::names::{count, quoted, OLD_ROOTS};
use crate::plan::OldRoot;
use crate::render;
use crate::rollback;
use crate::session::{Session, Target};
use crate::subvolume::{self, Entry, TOP_LEVEL};

#[derive(Debug, Clone, Copy)]
pub struct ForgetOptions {
    /// Say what would be deleted and change nothing (the session is read-only).
    pub dry_run: bool,
    /// With `dry_run`: as JSON.
    pub json: bool,
}

/// `name` must be a single path component (the command line checks it).
pub fn forget(
    session: &Session,
    target: &Target,
    options: &ForgetOptions,
    name: &OsStr,
) -> Result<(), Failure> {
    let path = Path::new(OLD_ROOTS).join(name);
    // Said before the checks, so it promises nothing: what follows says what was found.
    log::info!(
        "{}forgetting {} on {}",
        if options.dry_run { "dry run: " } else { "" },
        quoted(&path),
        session.described()
    );
    let not_changed = |e: anyhow::Error| {
        Failure::new(Disk::Untouched, e).state(format!(
            "{} on {} was not changed",
            quoted(&path),
            target.device.display()
        ))
    };
    let (old, fallback_default) = look(session, target, name).map_err(not_changed)?;
    if options.dry_run {
        if options.json {
            let doc = json(session, target, &old).map_err(not_changed)?;
            print!("{}", doc.to_string_pretty());
        } else {
            print!(
                "dry run, nothing changed; forget would delete:\n{}",
                describe(&old)
            );
        }
        return Ok(());
    }
    let eraser = Eraser {
        fs: session.fd(),
        fallback_default,
    };
    // Once deleting has begun, a failure never says "not changed": flags, qgroup limits or
    // nested subvolumes may already be gone even when no count says so.
    rollback::delete_old_root(&eraser, &old, "deleted").map_err(|e| {
        let deleted = e.downcast_ref::<Leftovers>().map_or(0, |l| l.deleted);
        Failure::new(Disk::OldRootPartlyDeleted, e).state(format!(
            "{} on {} may be partly deleted ({} of its nested subvolumes deleted); \
             `btrfs-rollback forget` again deletes the rest",
            quoted(&path),
            target.device.display(),
            deleted
        ))
    })
}

/// The old root `old_roots/NAME`, checked, and the subvolume the default moves to if it
/// had to (it cannot: an old root holding the default is refused).
fn look(session: &Session, target: &Target, name: &OsStr) -> Result<(OldRoot, u64)> {
    let fs = session.fd();
    let path = Path::new(OLD_ROOTS).join(name);
    let state = inspect(session.top(), &target.names)?;
    let Some(old) = state.old_roots.iter().find(|o| o.name == name).cloned() else {
        let what = match subvolume::open_dir(fs, OLD_ROOTS) {
            Err(_) => format!("there is no directory {OLD_ROOTS:?} in the top-level volume"),
            Ok(dir) => match subvolume::entry(std::os::fd::AsFd::as_fd(&dir), name)? {
                Entry::Missing => format!("there is no {}", quoted(&path)),
                Entry::Other(what) => format!("{} is {what}", quoted(&path)),
                Entry::Subvolume { .. } => format!("{} cannot be read", quoted(&path)),
            },
        };
        bail!(
            "{what}, not an old root: `forget` deletes only subvolumes in {OLD_ROOTS:?} \
             (`btrfs-rollback list` shows them)"
        );
    };
    if state.root.id() == Some(old.id) || state.blank.id() == Some(old.id) {
        bail!(
            "{} (ID {}) is the current root {} or the blank {}",
            quoted(&path),
            old.id,
            quoted(&target.names.root),
            quoted(&target.names.blank)
        );
    }
    let mounted = session.top().mounts_inside(path.as_os_str())?;
    if !mounted.is_empty() {
        bail!(
            "{} is in use on this system, mounted at {} (the running system's root after a \
             `restore`?); reboot, then forget it",
            quoted(&path),
            mounted.join(", ")
        );
    }
    if state.default_id == old.id || old.nested.iter().any(|n| n.id == state.default_id) {
        bail!(
            "{} holds the default subvolume (ID {}); make another subvolume the default first \
             (btrfs subvolume set-default)",
            quoted(&path),
            state.default_id
        );
    }
    let fallback_default = state.root.id().unwrap_or(TOP_LEVEL);
    Ok((old, fallback_default))
}

/// `forget NAME --dry-run --json`: the `forget` document of docs/json.md, the old root as
/// `list` shows it (its `nested` children before parents, the order they would go in).
fn json(session: &Session, target: &Target, old: &OldRoot) -> Result<Json> {
    let names = &target.names;
    let state = inspect(session.top(), names)?;
    Ok(render::old_root_document(
        "forget",
        &target.device,
        session.described(),
        names,
        &state,
        old,
        Vec::new(),
    ))
}

/// What would go, one subvolume a line, children before parents, the old root last.
fn describe(old: &OldRoot) -> String {
    let mut out = String::new();
    for n in &old.nested {
        render::subvolume_line(&mut out, n.id, &n.path, n.readonly);
    }
    let _ = writeln!(
        out,
        "  ID {:<6} {} (the old root, with {})",
        old.id,
        quoted(&old.path()),
        count(old.nested.len(), "nested subvolume")
    );
    out
}
