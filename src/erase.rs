//! Deleting a tree of subvolumes whatever stands in the way: depth, flags, quotas, the default.
//!
//! Each subvolume, children first, is deleted by id (SNAP_DESTROY_V2 with SPEC_BY_ID): one
//! ioctl, no path walked, the fast path that every ordinary tree takes, after a check that it
//! is still held where the walk found it. The walk is the caller's when it has one
//! ([`Eraser::delete_walked`]: the plan's walk of `root`, so a rollback walks the old root
//! once); the tree is walked again only when something in it changed since. When deleting by
//! id fails for any reason but "already gone", the subvolume is deleted *by handle* instead:
//!
//! - its directory is opened one component at a time from the top of the tree (O_NOFOLLOW |
//!   O_DIRECTORY), following ROOT_BACKREF items (which subvolume and directory hold it) and
//!   the INODE_REF chain of that directory (directories have exactly one), so no path is ever
//!   longer than one name. Deleting by id fails with ENAMETOOLONG past about 4 KiB because the
//!   kernel builds the full path (and INO_LOOKUP cannot say it either), and any local user can
//!   make such a path (`mkdir` twenty long names, then `btrfs subvolume create`);
//! - in that directory, what the kernel checks is cleared: the immutable and append-only flags
//!   of the holding directory and of the subvolume's own root directory (`chattr +i`/`+a`
//!   make `btrfs_may_delete` say EPERM), the read-only flag of the holding subvolume (EROFS),
//!   and the default-subvolume setting if it points here (EPERM), which moves to the
//!   subvolume the caller names;
//! - then BTRFS_IOC_SNAP_DESTROY deletes it by name on the holding directory's descriptor; if
//!   that says EDQUOT (a qgroup limit on the holding subvolume: deletion reserves metadata in
//!   it), the limits of the level-0 qgroups of both subvolumes, which are being erased, are
//!   lifted and the deletion is tried again.
//!
//! Renaming a deep subvolume to a short name first would work too, but needs the same walk to
//! reach it and leaves a renamed subvolume behind if the power goes in between; deleting by
//! name where the walk ends needs nothing more.
//!
//! Nothing stops the walk: what cannot be deleted is recorded with its path (or the part of it
//! that is known) and errno, the subvolumes holding it are left (they cannot go before it),
//! and everything else is deleted. The caller gets one error that lists what is left.
//! Only subvolumes inside the tree are ever touched: every handle walk starts at the top of
//! the tree, checked by id, and ends at a subvolume whose id is checked again.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use linux_raw_sys::btrfs::{
    BTRFS_FIRST_FREE_OBJECTID, BTRFS_FS_TREE_OBJECTID, BTRFS_INODE_REF_KEY, BTRFS_ORPHAN_ITEM_KEY,
    BTRFS_ROOT_BACKREF_KEY, BTRFS_ROOT_ITEM_KEY,
};

use crate::ioctl::{self, Errno, IoctlError, SearchRange, TreeSearch};
use crate::items::{self, RootItem, RootRef};
use crate::names::{count, quoted};
use crate::subvolume::{self, Nested, ROOT_TREE, TOP_LEVEL};

/// The inode number of every subvolume's root directory.
const SUBVOL_ROOT_INO: u64 = BTRFS_FIRST_FREE_OBJECTID as u64;
/// How many deletions of one tree are logged one by one.
const LOG_EACH: usize = 50;
/// How many undeletable subvolumes an error message names.
const NAME_AT_MOST: usize = 8;
/// Guard against a corrupt tree sending a walk round in circles.
const WALK_MAX: usize = 1 << 20;

/// A subvolume that could not be deleted.
#[derive(Debug, Clone)]
pub struct Undeleted {
    pub id: u64,
    /// Relative to the top-level volume, as far as it is known.
    pub path: PathBuf,
    /// What failed, with the errno.
    pub why: String,
}

/// What deleting a tree left behind. Its `Display` is the one message that says so.
#[derive(Debug, Clone)]
pub struct Leftovers {
    pub top: PathBuf,
    pub top_id: u64,
    /// How many subvolumes were deleted.
    pub deleted: usize,
    /// The subvolumes that failed, each with its reason.
    pub failed: Vec<Undeleted>,
    /// How many subvolumes were not tried because something inside them failed.
    pub holding: usize,
}

impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} (ID {}) could not be deleted: ",
            count(self.failed.len(), "subvolume"),
            quoted(&self.top),
            self.top_id
        )?;
        for (i, u) in self.failed.iter().take(NAME_AT_MOST).enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{} (ID {}): {}", short(&u.path), u.id, u.why)?;
        }
        if self.failed.len() > NAME_AT_MOST {
            write!(f, "; and {} more", self.failed.len() - NAME_AT_MOST)?;
        }
        write!(
            f,
            "; kept as well because they hold them: {}, {} and its files included; deleted: \
             the other {}",
            count(self.holding, "subvolume"),
            quoted(&self.top),
            count(self.deleted, "subvolume")
        )
    }
}

impl std::error::Error for Leftovers {}

/// The context of an error of [`Eraser::delete_walked`] that is not a [`Leftovers`] (which
/// counts for itself): how many nested subvolumes of the tree were deleted before it.
#[derive(Debug, Clone, Copy)]
pub struct DeletedBefore(pub usize);

impl DeletedBefore {
    fn add(e: anyhow::Error, deleted: usize) -> anyhow::Error {
        if deleted == 0 || e.downcast_ref::<Leftovers>().is_some() {
            return e;
        }
        e.context(DeletedBefore(deleted))
    }

    /// How many nested subvolumes a failed deletion had deleted, as far as `e` says.
    pub fn of(e: &anyhow::Error) -> usize {
        e.downcast_ref::<Leftovers>()
            .map(|l| l.deleted)
            .or_else(|| e.downcast_ref::<DeletedBefore>().map(|d| d.0))
            .unwrap_or(0)
    }
}

impl fmt::Display for DeletedBefore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "after deleting {}", count(self.0, "nested subvolume"))
    }
}

/// A path for a message: whole if short, its start and end if longer than a line.
pub fn short(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() <= 300 {
        return quoted(path).to_string();
    }
    let head = OsStr::from_bytes(&bytes[..80]);
    let tail = OsStr::from_bytes(&bytes[bytes.len() - 160..]);
    format!(
        "{}...{} ({} bytes)",
        quoted(head),
        quoted(tail),
        bytes.len()
    )
}

/// Deletes trees of subvolumes on the filesystem whose top-level volume is `fs`.
pub struct Eraser<'a> {
    pub fs: BorrowedFd<'a>,
    /// The subvolume that becomes the default if the default is one being deleted (the
    /// kernel refuses to delete the default subvolume).
    pub fallback_default: u64,
}

enum Gone {
    Deleted,
    AlreadyGone,
}

/// Where a subvolume is: the directory holding it, opened by handle.
struct Location {
    holder: OwnedFd,
    name: OsString,
    /// The holding subvolume's id and its root directory; `None` for the top of the tree,
    /// whose holder is outside the tree and is never changed.
    parent: Option<(u64, OwnedFd)>,
    path: PathBuf,
}

impl Eraser<'_> {
    /// Delete subvolume `top` (at `top_path`, relative to the top-level volume) and everything
    /// nested in it, children first, then commit. Returns how many nested subvolumes were
    /// deleted. If anything is left, the error is a [`Leftovers`] naming it.
    pub fn delete_tree(&self, top: u64, top_path: &Path) -> Result<usize> {
        self.delete(top, top_path, true, 0)
    }

    /// Delete the tree under `name` (in the top-level volume), after checking that `name` is
    /// still subvolume `id`. Returns how many nested subvolumes went with it.
    pub fn delete_expected(&self, name: &OsStr, id: u64) -> Result<usize> {
        subvolume::expect(self.fs, name, id)?;
        self.delete_tree(id, Path::new(name))
    }

    /// As [`Eraser::delete_expected`], with the tree's subvolumes as an earlier walk found
    /// them (`nested`, children first, with paths under `walked_at`): the tree is not walked
    /// again. Each one is still checked to be held where the walk found it before it is
    /// deleted by id; at the first that is not, or that cannot be deleted by id (something
    /// nested in it since, a flag, a quota, the default), what is left of the tree is walked
    /// and deleted as by [`Eraser::delete_expected`].
    pub fn delete_walked(
        &self,
        name: &OsStr,
        id: u64,
        nested: &[Nested],
        walked_at: &Path,
    ) -> Result<usize> {
        subvolume::expect(self.fs, name, id)?;
        let top_path = Path::new(name);
        let rebase = |n: &Nested| Nested {
            path: match n.path.strip_prefix(walked_at) {
                Ok(rest) => top_path.join(rest),
                Err(_) => n.path.clone(),
            },
            ..n.clone()
        };
        let mut walked = Walked::new(id, nested);
        let order = nested.iter().map(rebase).chain([top_of(id, top_path)]);
        let mut deleted = 0;
        for (i, sub) in order.enumerate() {
            match self.delete_by_id(&mut walked, &sub) {
                Ok(()) => {
                    deleted += usize::from(sub.id != id);
                    log_deleted(i, &sub);
                }
                Err(e) => {
                    log::debug!(
                        "{} (subvolume {}) by id: {e}; walking what is left of {} again",
                        short(&sub.path),
                        sub.id,
                        quoted(top_path)
                    );
                    return self
                        .delete(id, top_path, true, deleted)
                        .map_err(|e| DeletedBefore::add(e, deleted));
                }
            }
        }
        ioctl::sync(self.fs)
            .with_context(|| commit_failed(top_path, id))
            .map_err(|e| DeletedBefore::add(e, deleted))?;
        Ok(deleted)
    }

    /// Delete everything nested in `top` but not `top` itself, then commit.
    pub fn delete_nested(&self, top: u64, top_path: &Path) -> Result<usize> {
        self.delete(top, top_path, false, 0)
    }

    /// `deleted`: how many nested subvolumes of the tree were deleted already.
    fn delete(&self, top: u64, top_path: &Path, with_top: bool, deleted: usize) -> Result<usize> {
        let mut order = subvolume::nested_post_order(self.fs, top, top_path)?;
        if with_top {
            order.push(top_of(top, top_path));
        }
        let mut walked = Walked::new(top, &order);
        let mut deleted = deleted;
        let mut failed = Vec::new();
        // Subvolumes that still hold something that could not be deleted.
        let mut blocked: HashSet<u64> = HashSet::new();
        let mut holding = 0;
        for (i, sub) in order.iter().enumerate() {
            if blocked.contains(&sub.id) {
                holding += 1;
                blocked.insert(sub.parent);
                continue;
            }
            match self.delete_one(&mut walked, top_path, sub) {
                Ok(Gone::Deleted) => {
                    deleted += usize::from(sub.id != top);
                    log_deleted(i, sub);
                }
                Ok(Gone::AlreadyGone) => {
                    log::debug!("subvolume {} ({}) already gone", sub.id, short(&sub.path));
                }
                Err(u) => {
                    log::warn!(
                        "cannot delete {} (subvolume {}): {}; going on with the rest",
                        short(&u.path),
                        u.id,
                        u.why
                    );
                    blocked.insert(sub.parent);
                    failed.push(u);
                }
            }
        }
        let commit = ioctl::sync(self.fs);
        if !failed.is_empty() {
            return Err(Leftovers {
                top: top_path.to_path_buf(),
                top_id: top,
                deleted,
                failed,
                holding,
            }
            .into());
        }
        commit.with_context(|| commit_failed(top_path, top))?;
        Ok(deleted)
    }

    /// The fast path: delete `sub` by id, only while it and every subvolume holding it are
    /// where the walk found them ([`Walked`]). One moved elsewhere since is left to the handle
    /// walk, which checks it is inside the tree.
    fn delete_by_id(&self, walked: &mut Walked, sub: &Nested) -> Result<(), IoctlError> {
        if sub.id != walked.top {
            let moved = |ioctl| IoctlError {
                ioctl,
                errno: Errno::EAGAIN,
            };
            if !self.holders_in_place(walked, sub.parent) {
                return Err(moved(
                    "a subvolume holding it moved since the walk: not deleted by id",
                ));
            }
            if !self.held_by(sub.id, sub.parent) {
                return Err(moved("moved since the walk: not deleted by id"));
            }
        }
        ioctl::snap_destroy_by_id(self.fs, sub.id)
    }

    fn holders_in_place(&self, walked: &mut Walked, holder: u64) -> bool {
        walked.holders_in_place(holder, |id, parent| self.held_by(id, parent))
    }

    /// Whether subvolume `id` is held by subvolume `parent` now (its ROOT_BACKREF).
    fn held_by(&self, id: u64, parent: u64) -> bool {
        matches!(backref(self.fs, id), Ok((p, ..)) if p == parent)
    }

    fn delete_one(
        &self,
        walked: &mut Walked,
        top_path: &Path,
        sub: &Nested,
    ) -> Result<Gone, Undeleted> {
        let top = walked.top;
        let first = match self.delete_by_id(walked, sub) {
            Ok(()) => return Ok(Gone::Deleted),
            // Gone for sure only if nothing links it any more (its root item stays until the
            // kernel's cleaner has dropped it; its back reference goes with the deletion).
            Err(e) if e.errno == Errno::ENOENT && !linked(self.fs, sub.id) => {
                return Ok(Gone::AlreadyGone)
            }
            Err(e) => e,
        };
        log::debug!(
            "{} (subvolume {}) by id: {first}; deleting it by handle",
            short(&sub.path),
            sub.id
        );
        let fail = |path: &Path, why: String| Undeleted {
            id: sub.id,
            path: path.to_path_buf(),
            why,
        };
        let at = match self.locate(top, top_path, sub.id) {
            Ok(at) => at,
            Err(e) if errno_of(&e) == Some(Errno::ENOENT) => return Ok(Gone::AlreadyGone),
            Err(e) => return Err(fail(&sub.path, format!("{first}; then {e:#}"))),
        };
        match self.delete_by_handle(sub.id, &at) {
            Ok(gone) => {
                if first.errno == Errno::ENAMETOOLONG {
                    log::info!(
                        "deleted {} (subvolume {}), too deep to delete by id, by handle",
                        short(&at.path),
                        sub.id
                    );
                }
                Ok(gone)
            }
            Err(e) => Err(fail(&at.path, format!("{e:#} (by id: {first})"))),
        }
    }

    /// Clear what stands in the way, then delete by name in the holding directory.
    fn delete_by_handle(&self, id: u64, at: &Location) -> Result<Gone> {
        let child = match subvolume::open_dir(at.holder.as_fd(), at.name.as_os_str()) {
            Ok(fd) => fd,
            Err(e) if errno_of(&e) == Some(Errno::ENOENT) => return Ok(Gone::AlreadyGone),
            Err(e) => return Err(e).context(format!("cannot open {}", short(&at.path))),
        };
        let found = subvolume::id_of(child.as_fd())?;
        anyhow::ensure!(
            found == id,
            "{} is subvolume {found} now, not {id}; leaving it",
            short(&at.path)
        );
        let path = &at.path;
        if let Some((parent, parent_root)) = &at.parent {
            // A read-only holding subvolume refuses both the flag change and the deletion.
            if subvolume::readonly(self.fs, *parent)? == Some(true) {
                let flags = ioctl::subvol_getflags(parent_root.as_fd())?;
                ioctl::subvol_setflags(parent_root.as_fd(), flags & !ioctl::SUBVOL_RDONLY)
                    .with_context(|| {
                        format!("cannot clear the read-only flag of subvolume {parent}")
                    })?;
                log::debug!(
                    "clearing the read-only flag of subvolume {parent}, which holds {}, to \
                     delete what is inside",
                    short(path)
                );
            }
            clear_undeletable(
                at.holder.as_fd(),
                &format!("the directory holding {}", short(path)),
            )?;
        }
        if let Err(e) = clear_undeletable(child.as_fd(), &short(path)) {
            // The flags of a read-only subvolume cannot change: it is going anyway.
            if errno_of(&e) != Some(Errno::EROFS) {
                return Err(e);
            }
            let flags = ioctl::subvol_getflags(child.as_fd())?;
            ioctl::subvol_setflags(child.as_fd(), flags & !ioctl::SUBVOL_RDONLY)?;
            clear_undeletable(child.as_fd(), &short(path))?;
        }
        if subvolume::default_id(self.fs)? == id {
            ioctl::set_default_subvol(self.fs, self.fallback_default).with_context(|| {
                format!(
                    "cannot make subvolume {} the default instead",
                    self.fallback_default
                )
            })?;
            log::warn!(
                "{} (ID {id}), about to be deleted, was the default subvolume; the default is \
                 now subvolume {}",
                short(path),
                self.fallback_default
            );
        }
        drop(child);
        let mut limits_lifted = false;
        loop {
            match ioctl::snap_destroy_by_name(at.holder.as_fd(), &at.name) {
                Ok(()) => return Ok(Gone::Deleted),
                Err(e) if e.errno == Errno::ENOENT => return Ok(Gone::AlreadyGone),
                Err(e) if e.errno == Errno::EDQUOT && !limits_lifted => {
                    limits_lifted = true;
                    let mut ids = vec![id];
                    ids.extend(at.parent.as_ref().map(|(p, _)| *p));
                    for q in ids {
                        match ioctl::qgroup_clear_limit(self.fs, q) {
                            Ok(()) => log::warn!(
                                "lifted the quota limits of qgroup 0/{q}, which is being \
                                 erased, to delete {}",
                                short(path)
                            ),
                            Err(e) => log::debug!("qgroup 0/{q}: {e}"),
                        }
                    }
                    let _ = ioctl::sync(self.fs);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Open the directory holding subvolume `id`, one name at a time from the top of the
    /// tree, which is subvolume `top` at `top_path`.
    fn locate(&self, top: u64, top_path: &Path, id: u64) -> Result<Location> {
        if id == top {
            let parent_dir = match top_path.parent() {
                Some(p) if !p.as_os_str().is_empty() => subvolume::open_dir(self.fs, p)?,
                _ => subvolume::open_dir(self.fs, ".")?,
            };
            let name = top_path
                .file_name()
                .context("the top of the tree has no name")?;
            return Ok(Location {
                holder: parent_dir,
                name: name.to_os_string(),
                parent: None,
                path: top_path.to_path_buf(),
            });
        }
        // From `id` up to `top`: (holding subvolume, holding directory, name) at each level.
        let mut steps = Vec::new();
        let mut cur = id;
        while cur != top {
            let (parent, dirid, name) = backref(self.fs, cur)?;
            anyhow::ensure!(
                parent != TOP_LEVEL && steps.len() < WALK_MAX,
                "subvolume {id} is not inside {} (ID {top}) any more; leaving it",
                quoted(top_path)
            );
            steps.push((parent, dirid, name));
            cur = parent;
        }
        let mut root = subvolume::expect(self.fs, top_path, top)?;
        let mut path = top_path.to_path_buf();
        while let Some((parent, dirid, name)) = steps.pop() {
            let mut dir = subvolume::open_dir(root.as_fd(), ".")?;
            for comp in dir_components(self.fs, parent, dirid)? {
                dir = subvolume::open_dir(dir.as_fd(), comp.as_os_str())
                    .with_context(|| format!("cannot open {}", short(&path.join(&comp))))?;
                path.push(&comp);
            }
            // Flags are cleared through these handles: they must be in the subvolume the walk
            // expects, not in one a user swapped in meanwhile.
            let found = subvolume::id_of(dir.as_fd())?;
            anyhow::ensure!(
                found == parent,
                "{} is in subvolume {found} now, not {parent}; leaving it",
                short(&path)
            );
            path.push(&name);
            if steps.is_empty() {
                return Ok(Location {
                    holder: dir,
                    name,
                    parent: Some((parent, root)),
                    path,
                });
            }
            root = subvolume::open_dir(dir.as_fd(), name.as_os_str())
                .with_context(|| format!("cannot open {}", short(&path)))?;
            let next = steps.last().map_or(id, |s| s.0);
            let found = subvolume::id_of(root.as_fd())?;
            anyhow::ensure!(
                found == next,
                "{} is subvolume {found} now, not {next}; leaving it",
                short(&path)
            );
        }
        unreachable!("a walk from a nested subvolume has at least one step")
    }
}

/// A tree as a walk found it, for deleting it by id: which subvolume held each one, and the
/// holders found still in place since. Each holder is checked once, with the whole chain above
/// it, before the first deletion inside it (what a fresh walk at that moment would have
/// found), and each subvolume right before its own deletion: so a subvolume moved out of the
/// tree, alone or with what holds it, between the walk and the deletion is never deleted by
/// id. A move while the deletion runs (another process with the top level mounted, which
/// nothing has in stage 1) can still race it, as it could race any check.
struct Walked {
    top: u64,
    held_by: HashMap<u64, u64>,
    in_place: HashSet<u64>,
}

impl Walked {
    fn new(top: u64, nested: &[Nested]) -> Walked {
        Walked {
            top,
            held_by: nested.iter().map(|n| (n.id, n.parent)).collect(),
            in_place: HashSet::from([top]),
        }
    }

    /// Whether `holder` and the subvolumes holding it, up to the first one already found in
    /// place, are each held where the walk found them (`held(id, parent)` says whether `id`
    /// is held by `parent` now). Only a whole chain found in place is remembered as such: a
    /// holder whose own holder moved is checked again, and refused again, next time.
    fn holders_in_place(&mut self, holder: u64, held: impl Fn(u64, u64) -> bool) -> bool {
        let Some(chain) = self.unchecked_chain(holder) else {
            return false;
        };
        if !chain.iter().all(|&(id, parent)| held(id, parent)) {
            return false;
        }
        self.in_place.extend(chain.iter().map(|&(id, _)| id));
        true
    }

    /// `holder` and the subvolumes holding it, each with the one the walk found holding it,
    /// up to the first one already found in place; `None` if the chain does not get there (a
    /// subvolume the walk did not find, or a loop, which a walk cannot give).
    fn unchecked_chain(&self, mut holder: u64) -> Option<Vec<(u64, u64)>> {
        let mut chain = Vec::new();
        while !self.in_place.contains(&holder) {
            let parent = *self.held_by.get(&holder)?;
            if chain.len() >= self.held_by.len() {
                return None;
            }
            chain.push((holder, parent));
            holder = parent;
        }
        Some(chain)
    }
}

/// The top of a tree to delete, as the last entry of its post-order.
fn top_of(id: u64, path: &Path) -> Nested {
    Nested {
        id,
        parent: 0,
        path: path.to_path_buf(),
        readonly: false,
    }
}

/// Name the first few deletions of a tree (the `i`th); thousands of lines at every boot would
/// rotate the log away.
fn log_deleted(i: usize, sub: &Nested) {
    if i < LOG_EACH {
        log::debug!("deleted {} (subvolume {})", short(&sub.path), sub.id);
    } else if i == LOG_EACH {
        log::debug!("... deleting the rest without a line each");
    }
}

fn commit_failed(top_path: &Path, top: u64) -> String {
    format!(
        "cannot commit the deletion of {} (ID {top})",
        quoted(top_path)
    )
}

/// Wait, at most `timeout`, until the kernel has dropped every deleted subvolume (what
/// `btrfs subvolume sync` waits for: no ORPHAN items left in the root tree), committing as it
/// goes so that the freed space can be used. Returns whether it got there.
pub fn wait_for_cleaner(fs: BorrowedFd<'_>, timeout: Duration) -> bool {
    // BTRFS_ORPHAN_OBJECTID is -5ULL; a deleted subvolume has an ORPHAN_ITEM keyed by its id
    // until the cleaner has dropped its tree.
    const ORPHAN_OBJECTID: u64 = -5i64 as u64;
    let range = SearchRange::of(ROOT_TREE, ORPHAN_OBJECTID, BTRFS_ORPHAN_ITEM_KEY);
    let start = Instant::now();
    loop {
        let _ = ioctl::sync(fs);
        match TreeSearch::first(fs, range) {
            Ok(None) => {
                // One more commit, so that the space the last drop freed is usable.
                let _ = ioctl::sync(fs);
                log::debug!(
                    "the kernel dropped the deleted subvolumes in {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return true;
            }
            Ok(_) => {}
            Err(e) => {
                log::debug!("cannot tell whether deleted subvolumes are dropped: {e}");
                return false;
            }
        }
        if start.elapsed() >= timeout {
            log::warn!(
                "the kernel has not finished freeing the deleted subvolumes after {} s; going on",
                timeout.as_secs()
            );
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Clear the immutable and append-only flags of `fd`, if set. Returns whether they were.
pub fn clear_undeletable(fd: BorrowedFd<'_>, what: &str) -> Result<bool> {
    let flags = ioctl::getflags(fd)?;
    if flags & ioctl::FS_UNDELETABLE_FL == 0 {
        return Ok(false);
    }
    ioctl::setflags(fd, flags & !ioctl::FS_UNDELETABLE_FL)
        .with_context(|| format!("cannot clear the immutable/append-only flags of {what}"))?;
    log::warn!("cleared the immutable/append-only flags of {what}: they forbid its deletion");
    Ok(true)
}

/// The errno at the root of an error, if it came from a system call.
pub fn errno_of(e: &anyhow::Error) -> Option<Errno> {
    e.chain().find_map(|c| {
        c.downcast_ref::<IoctlError>()
            .map(|i| i.errno)
            .or_else(|| c.downcast_ref::<Errno>().copied())
    })
}

/// How many bytes the tree blocks of subvolume `id` take (its root item's `bytes_used`: the
/// metadata that deleting it frees, not the data). `None` if it no longer exists.
pub fn tree_bytes(fs: BorrowedFd<'_>, id: u64) -> Result<Option<u64>> {
    Ok(subvolume::root_item(fs, id)?.map(|r| r.bytes_used))
}

/// The tree bytes of every subvolume together (the top level and every fs tree: the sum of
/// their ROOT_ITEM `bytes_used`), to weigh what one tree holds against the whole. Deleted
/// subvolumes not yet dropped by the cleaner count too (their space is not free yet).
pub fn all_tree_bytes(fs: BorrowedFd<'_>) -> Result<u64> {
    const LAST_FREE_OBJECTID: u64 = -256i64 as u64;
    let range = SearchRange {
        tree_id: ROOT_TREE,
        min: (u64::from(BTRFS_FS_TREE_OBJECTID), BTRFS_ROOT_ITEM_KEY, 0),
        max: (LAST_FREE_OBJECTID, BTRFS_ROOT_ITEM_KEY, u64::MAX),
        min_transid: 0,
    };
    let context = || "cannot read the root items";
    let mut search = TreeSearch::new(fs, range);
    let mut total = 0u64;
    while let Some((header, data)) = search.next().with_context(context)? {
        if header.item_type == BTRFS_ROOT_ITEM_KEY {
            let item = RootItem::parse(data).with_context(context)?;
            total = total.saturating_add(item.bytes_used);
        }
    }
    Ok(total)
}

/// Whether deleting subvolume `top` with everything nested in it is sure to make room on a
/// filesystem whose metadata is full: the trees being deleted hold at least half of the tree
/// bytes of all subvolumes together, so the space is held by them and not by a sibling (a
/// full `persist`). Returns (what the tree holds, what all subvolumes hold), in bytes.
pub fn tree_holds_the_space(fs: BorrowedFd<'_>, top: u64, top_path: &Path) -> Result<(u64, u64)> {
    let mut held = tree_bytes(fs, top)?.unwrap_or(0);
    for (_, item) in subvolume::walk(fs, top, top_path)? {
        held = held.saturating_add(item.bytes_used);
    }
    Ok((held, all_tree_bytes(fs)?))
}

/// The rule [`tree_holds_the_space`] feeds: at least half of the whole, and at least 1 MiB
/// (far more than a snapshot and an exchange need).
pub fn deleting_makes_room(held: u64, total: u64) -> bool {
    held >= 1 << 20 && held.saturating_mul(2) >= total
}

/// Whether subvolume `id` still has a place in the tree (a ROOT_BACKREF item). When that
/// cannot be read, it is assumed to have one, so that the deletion is tried by handle.
fn linked(fs: BorrowedFd<'_>, id: u64) -> bool {
    match backref(fs, id) {
        Ok(_) => true,
        Err(e) => errno_of(&e) != Some(Errno::ENOENT),
    }
}

/// Where subvolume `id` is: (holding subvolume, directory inode in it, name), from its
/// ROOT_BACKREF item (a subvolume has one).
fn backref(fs: BorrowedFd<'_>, id: u64) -> Result<(u64, u64, OsString)> {
    let context = || format!("cannot find where subvolume {id} is");
    let range = SearchRange::of(ROOT_TREE, id, BTRFS_ROOT_BACKREF_KEY);
    let (header, data) = TreeSearch::first(fs, range)
        .with_context(context)?
        .ok_or(IoctlError {
            ioctl: "BTRFS_IOC_TREE_SEARCH_V2 (ROOT_BACKREF)",
            errno: Errno::ENOENT,
        })?;
    let r = RootRef::parse(&data).with_context(context)?;
    Ok((header.offset, r.dirid, OsString::from_vec(r.name.to_vec())))
}

/// The names leading from the root of subvolume `tree` to its directory `dirid`, from the
/// directories' INODE_REF items (one per directory: directories have no hard links).
fn dir_components(fs: BorrowedFd<'_>, tree: u64, mut dirid: u64) -> Result<Vec<OsString>> {
    let mut names = Vec::new();
    while dirid != SUBVOL_ROOT_INO {
        anyhow::ensure!(names.len() < WALK_MAX, "directory loop in subvolume {tree}");
        let context = || format!("cannot read the name of directory {dirid} in subvolume {tree}");
        let range = SearchRange::of(tree, dirid, BTRFS_INODE_REF_KEY);
        let (header, data) =
            TreeSearch::first(fs, range)
                .with_context(context)?
                .ok_or(IoctlError {
                    ioctl: "BTRFS_IOC_TREE_SEARCH_V2 (INODE_REF)",
                    errno: Errno::ENOENT,
                })?;
        let refs = items::inode_refs(header.offset, &data).with_context(context)?;
        let first = refs.first().with_context(context)?;
        names.push(OsString::from_vec(first.name.to_vec()));
        dirid = header.offset;
    }
    names.reverse();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(id: u64, parent: u64) -> Nested {
        Nested {
            id,
            parent,
            path: PathBuf::from(format!("t/{id}")),
            readonly: false,
        }
    }

    /// T (1) holds A (2) holds H (3) holds C1 (4) and C2 (5); then A moves out of T.
    #[test]
    fn the_count_deleted_before_an_error_is_kept() {
        let plain = anyhow::anyhow!("walk failed");
        assert_eq!(DeletedBefore::of(&DeletedBefore::add(plain, 7)), 7);
        let e = DeletedBefore::add(anyhow::anyhow!("commit failed"), 3);
        assert!(format!("{e:#}").starts_with("after deleting 3 nested subvolumes: "));
        let left = Leftovers {
            top: PathBuf::from("t"),
            top_id: 1,
            deleted: 9,
            failed: Vec::new(),
            holding: 0,
        };
        // A Leftovers counts for itself (it was given the earlier deletions).
        assert_eq!(DeletedBefore::of(&DeletedBefore::add(left.into(), 4)), 9);
        assert_eq!(DeletedBefore::of(&anyhow::anyhow!("nothing deleted")), 0);
    }

    #[test]
    fn a_holder_whose_holder_moved_is_never_found_in_place() {
        let order = [nested(4, 3), nested(5, 3), nested(3, 2), nested(2, 1)];
        let mut walked = Walked::new(1, &order);
        let moved_a = |id: u64, parent: u64| !(id == 2 && parent == 1);
        // C1's holders: H is where it was, A is not: refused, and H is not remembered...
        assert!(!walked.holders_in_place(3, moved_a));
        assert!(!walked.in_place.contains(&3));
        // ... so C2's holders are refused too.
        assert!(!walked.holders_in_place(3, moved_a));
        // Nothing moved: found in place once, then remembered (no more lookups).
        let mut walked = Walked::new(1, &order);
        assert!(walked.holders_in_place(3, |_, _| true));
        assert!(walked.holders_in_place(3, |_, _| panic!("looked up again")));
        assert!(walked.holders_in_place(2, |_, _| panic!("looked up again")));
        // A holder the walk did not find, and a loop, are never in place.
        assert!(!walked.holders_in_place(99, |_, _| true));
        let mut looped = Walked::new(1, &[nested(6, 7), nested(7, 6)]);
        assert!(!looped.holders_in_place(6, |_, _| true));
    }

    #[test]
    fn long_paths_are_shortened_in_messages() {
        let long = PathBuf::from(format!("root/{}/deep", "d".repeat(4000)));
        let s = short(&long);
        assert!(s.len() < 300, "{s}");
        assert!(s.contains("4010 bytes"), "{s}");
        assert!(s.contains("deep"), "{s}");
        assert_eq!(short(Path::new("root/a")), "\"root/a\"");
    }

    #[test]
    fn errno_is_found_under_context() {
        let e = anyhow::Error::new(IoctlError {
            ioctl: "BTRFS_IOC_SNAP_CREATE_V2",
            errno: Errno::ENOSPC,
        })
        .context("cannot snapshot");
        assert_eq!(errno_of(&e), Some(Errno::ENOSPC));
        let e = anyhow::Error::new(Errno::EDQUOT).context("cannot exchange");
        assert_eq!(errno_of(&e), Some(Errno::EDQUOT));
        assert_eq!(errno_of(&anyhow::anyhow!("no errno")), None);
    }

    #[test]
    fn room_only_when_the_tree_holds_half_of_the_metadata() {
        // The reviewer's case: root holds a few MiB, a full persist holds far more.
        assert!(!deleting_makes_room(3 << 20, 40 << 20));
        assert!(deleting_makes_room(30 << 20, 40 << 20));
        assert!(deleting_makes_room(20 << 20, 40 << 20));
        // Tiny trees never, whatever the share.
        assert!(!deleting_makes_room(64 << 10, 100 << 10));
    }

    #[test]
    fn leftovers_name_a_few_and_count_the_rest() {
        let failed = (0..12)
            .map(|i| Undeleted {
                id: 300 + i,
                path: PathBuf::from(format!("t/s{i}")),
                why: "BTRFS_IOC_SNAP_DESTROY failed: EPERM".into(),
            })
            .collect();
        let l = Leftovers {
            top: "t".into(),
            top_id: 256,
            deleted: 5,
            failed,
            holding: 1,
        };
        let text = l.to_string();
        assert!(
            text.starts_with("12 subvolumes of \"t\" (ID 256)"),
            "{text}"
        );
        assert!(text.contains("\"t/s7\" (ID 307): BTRFS_IOC_SNAP_DESTROY failed: EPERM"));
        assert!(!text.contains("t/s8\""), "{text}");
        assert!(text.contains("and 4 more"), "{text}");
        assert!(text.contains("deleted: the other 5 subvolumes"), "{text}");
    }
}
