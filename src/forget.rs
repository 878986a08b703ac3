//! `btrfs-rollback forget NAME`: delete the kept old root `old_roots/NAME` with everything
//! nested in it, with the deletion `run` prunes old roots with (`erase.rs`: any depth,
//! read-only flags, `chattr +i`, quotas). `btrfs subvolume delete` refuses a subvolume with
//! nested ones; this does not.
//!
//! Refused, changing nothing: a name that is not a subvolume directly in `old_roots/`, an old
//! root that is mounted (or anything in it), in this mount namespace (the running system's
//! root after a live `restore`) or any other (a container, a service with `PrivateMounts=`),
//! and one that is or holds the default subvolume. Only that old root is read, not the whole
//! state: another old root that cannot be read does not keep it. `--dry-run` names what would
//! go, by path and id, on a read-only mount.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::erase::{DeletedBefore, Eraser};
use crate::failure::{Disk, Failure};
use crate::inspect::{self, inspect};
use crate::json::Json;
use crate::mountinfo::Mount;
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
        let deleted = DeletedBefore::of(&e);
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
///
/// Reads only what it needs: that old root, the ids of the current root and the blank, and
/// the default subvolume. Not the whole state (`inspect`): another old root or a leftover
/// that cannot be read must not keep this one from going.
fn look(session: &Session, target: &Target, name: &OsStr) -> Result<(OldRoot, u64)> {
    let fs = session.fd();
    let path = Path::new(OLD_ROOTS).join(name);
    let old = read_old_root(fs, name)?;
    let root = slot_id(fs, &target.names.root)?;
    let blank = slot_id(fs, &target.names.blank)?;
    if root == Some(old.id) || blank == Some(old.id) {
        bail!(
            "{} (ID {}) is the current root {} or the blank {}",
            quoted(&path),
            old.id,
            quoted(&target.names.root),
            quoted(&target.names.blank)
        );
    }
    refuse_mounted(session, &old)?;
    let default_id = subvolume::default_id(fs)?;
    if default_id == old.id || old.nested.iter().any(|n| n.id == default_id) {
        bail!(
            "{} holds the default subvolume (ID {}); make another subvolume the default first \
             (btrfs subvolume set-default)",
            quoted(&path),
            default_id
        );
    }
    Ok((old, root.unwrap_or(TOP_LEVEL)))
}

/// `old_roots/NAME` with everything nested in it; refused if it is not a subvolume there.
fn read_old_root(fs: BorrowedFd<'_>, name: &OsStr) -> Result<OldRoot> {
    let path = Path::new(OLD_ROOTS).join(name);
    let what = match subvolume::open_dir(fs, OLD_ROOTS) {
        Err(_) => format!("there is no directory {OLD_ROOTS:?} in the top-level volume"),
        Ok(dir) => match subvolume::entry(dir.as_fd(), name)
            .with_context(|| format!("cannot read {}", quoted(&path)))?
        {
            Entry::Missing => format!("there is no {}", quoted(&path)),
            Entry::Other(what) => format!("{} is {what}", quoted(&path)),
            Entry::Subvolume { .. } => {
                return inspect::old_root(fs, name)
                    .with_context(|| format!("cannot read the old root {}", quoted(&path)))?
                    .with_context(|| format!("{} vanished while being read", quoted(&path)))
            }
        },
    };
    bail!(
        "{what}, not an old root: `forget` deletes only subvolumes in {OLD_ROOTS:?} \
         (`btrfs-rollback list` shows them)"
    )
}

/// The id of the subvolume `name` in the top level, `None` if it is not one.
fn slot_id(fs: BorrowedFd<'_>, name: &OsStr) -> Result<Option<u64>> {
    match subvolume::entry(fs, name)? {
        Entry::Subvolume { id, .. } => Ok(Some(id)),
        Entry::Missing | Entry::Other(_) => Ok(None),
    }
}

/// Refuse an old root that is mounted, or any subvolume or directory in it, in any mount
/// namespace: deleting it would pull the files from under whatever uses it (the running
/// system after a live `restore`, a container, a service with `PrivateMounts=`).
fn refuse_mounted(session: &Session, old: &OldRoot) -> Result<()> {
    let path = old.path();
    let ids: Vec<u64> = std::iter::once(old.id)
        .chain(old.nested.iter().map(|n| n.id))
        .collect();
    let mut found: Vec<String> = session
        .top()
        .mounts_of(path.as_os_str(), &ids)
        .with_context(|| format!("cannot tell whether {} is mounted", quoted(&path)))?
        .iter()
        .map(|(pid, m)| in_use(old, *pid, m))
        .collect();
    if found.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 5;
    let more = found.len().saturating_sub(SHOWN);
    found.truncate(SHOWN);
    if more > 0 {
        found.push(format!("and {more} more"));
    }
    bail!(
        "{} (ID {}) is in use: {}; unmount it there or stop what uses it (after a live \
         `restore`, reboot), then forget it",
        quoted(&path),
        old.id,
        found.join("; ")
    )
}

/// One mount of (something in) `old`, for the refusal: which subvolume, where, in whose
/// mount namespace (`pid` `None`: ours).
fn in_use(old: &OldRoot, pid: Option<u32>, m: &Mount) -> String {
    let shows = m.root.strip_prefix("/").unwrap_or(&m.root);
    // Without `subvolid=` (very old kernels): the deepest subvolume whose path holds it.
    let id = m.subvolid.unwrap_or_else(|| {
        old.nested
            .iter()
            .filter(|n| shows.starts_with(&n.path))
            .max_by_key(|n| n.path.as_os_str().len())
            .map_or(old.id, |n| n.id)
    });
    let whose = match pid {
        None => "on this system (in this command's mount namespace)".to_string(),
        Some(pid) => format!("in the mount namespace of PID {pid}"),
    };
    format!(
        "subvolume {id} ({}) is mounted at {} {whose}",
        quoted(shows),
        quoted(&m.mount_point)
    )
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
