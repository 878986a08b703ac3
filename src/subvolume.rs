//! Subvolumes by id: their children, their read-only flag, the default subvolume.
//!
//! Modelled on libbtrfsutil (kdave/btrfs-progs `libbtrfsutil/subvolume.c`): children are the
//! ROOT_REF items of the root tree, paths come from INO_LOOKUP, and trees are walked in
//! post-order ("foo/bar is yielded before foo"). Children that vanish mid-walk are skipped.
//! Deleting a tree, whatever stands in the way, is `erase.rs`.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use linux_raw_sys::btrfs::{
    BTRFS_DIR_ITEM_KEY, BTRFS_FIRST_FREE_OBJECTID, BTRFS_FS_TREE_OBJECTID, BTRFS_ROOT_ITEM_KEY,
    BTRFS_ROOT_REF_KEY, BTRFS_ROOT_TREE_DIR_OBJECTID, BTRFS_ROOT_TREE_OBJECTID,
};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};

use crate::ioctl::{self, Errno, SearchRange, TreeSearch};
use crate::items::{self, RootItem, RootRef};
use crate::names::quoted;

/// The id of the top-level subvolume (`subvolid=5`).
pub const TOP_LEVEL: u64 = BTRFS_FS_TREE_OBJECTID as u64;
/// The root tree, which holds a ROOT_ITEM for every subvolume and the ROOT_REF/ROOT_BACKREF
/// items that link them.
pub const ROOT_TREE: u64 = BTRFS_ROOT_TREE_OBJECTID as u64;
/// The inode number of every subvolume's root directory.
const SUBVOL_ROOT_INO: u64 = BTRFS_FIRST_FREE_OBJECTID as u64;

/// What a name in the top-level directory turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Missing,
    Subvolume {
        id: u64,
        readonly: bool,
    },
    /// Something that is not a subvolume; the string says what (for the message).
    Other(&'static str),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Missing => write!(f, "missing"),
            Entry::Subvolume { id, readonly } => {
                let ro = if *readonly { "read-only " } else { "" };
                write!(f, "{ro}subvolume {id}")
            }
            Entry::Other(what) => write!(f, "{what}"),
        }
    }
}

/// A subvolume somewhere below another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nested {
    pub id: u64,
    pub parent: u64,
    /// Path relative to the top-level volume.
    pub path: PathBuf,
    pub readonly: bool,
}

/// Look at `name` in the directory `dir` (the top-level volume) without following symlinks.
pub fn entry(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Entry> {
    let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", quoted(name))),
    };
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFDIR {
        return Ok(Entry::Other(match kind {
            SFlag::S_IFLNK => "a symbolic link",
            SFlag::S_IFREG => "a regular file",
            _ => "not a directory",
        }));
    }
    if st.st_ino != SUBVOL_ROOT_INO {
        return Ok(Entry::Other("a plain directory, not a subvolume"));
    }
    let fd = open_dir(dir, name)?;
    let id =
        id_of(fd.as_fd()).with_context(|| format!("cannot read the id of {}", quoted(name)))?;
    let flags = ioctl::subvol_getflags(fd.as_fd())
        .with_context(|| format!("cannot read the flags of {}", quoted(name)))?;
    Ok(Entry::Subvolume {
        id,
        readonly: flags & ioctl::SUBVOL_RDONLY != 0,
    })
}

/// Open `path` (relative to the top level `fs`) and check that it is subvolume `id`: the one
/// check before anything is changed through a name.
pub fn expect<P: AsRef<Path> + ?Sized>(fs: BorrowedFd<'_>, path: &P, id: u64) -> Result<OwnedFd> {
    let path = path.as_ref();
    let fd = open_dir(fs, path).with_context(|| format!("cannot open {}", quoted(path)))?;
    let found = id_of(fd.as_fd())
        .with_context(|| format!("cannot read the subvolume id of {}", quoted(path)))?;
    if found != id {
        bail!(
            "{} is subvolume {found}, expected subvolume {id}; leaving it alone",
            quoted(path)
        );
    }
    Ok(fd)
}

/// The names in the directory `dir` that start with `prefix`.
pub fn names_with_prefix(dir: BorrowedFd<'_>, prefix: &OsStr) -> Result<Vec<OsString>> {
    let fd = open_dir(dir, ".")?;
    let mut d = nix::dir::Dir::from_fd(fd).context("cannot read the top-level directory")?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry.context("cannot read the top-level directory")?;
        let name = entry.file_name().to_bytes();
        if name.starts_with(prefix.as_bytes()) {
            out.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(out)
}

/// Open a directory below `dir` without following a symlink at the last component.
pub fn open_dir<P: ?Sized + nix::NixPath>(dir: BorrowedFd<'_>, path: &P) -> Result<OwnedFd> {
    Ok(openat(
        dir,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// The id of the subvolume that `fd` is in.
pub fn id_of(fd: BorrowedFd<'_>) -> Result<u64> {
    Ok(ioctl::ino_lookup(fd, 0, SUBVOL_ROOT_INO)?.0)
}

/// The direct children of subvolume `parent`: (child id, directory inode in parent, name).
pub fn children(fs: BorrowedFd<'_>, parent: u64) -> Result<Vec<(u64, u64, OsString)>> {
    let context = || format!("cannot list the subvolumes inside subvolume {parent}");
    let range = SearchRange::of(ROOT_TREE, parent, BTRFS_ROOT_REF_KEY);
    let mut search = TreeSearch::new(fs, range);
    let mut out = Vec::new();
    while let Some((header, data)) = search.next().with_context(context)? {
        let r = RootRef::parse(data).with_context(context)?;
        out.push((header.offset, r.dirid, OsString::from_vec(r.name.to_vec())));
    }
    Ok(out)
}

/// Subvolume `id`'s ROOT_ITEM. `None` if the subvolume no longer exists.
pub fn root_item(fs: BorrowedFd<'_>, id: u64) -> Result<Option<RootItem>> {
    let context = || format!("cannot read the root item of subvolume {id}");
    let range = SearchRange::of(ROOT_TREE, id, BTRFS_ROOT_ITEM_KEY);
    match TreeSearch::first(fs, range).with_context(context)? {
        Some((_, data)) => Ok(Some(RootItem::parse(&data).with_context(context)?)),
        None => Ok(None),
    }
}

/// Whether subvolume `id` is read-only, from its ROOT_ITEM. `None` if it no longer exists.
pub fn readonly(fs: BorrowedFd<'_>, id: u64) -> Result<Option<bool>> {
    Ok(root_item(fs, id)?.map(|r| r.readonly()))
}

/// Every subvolume below `top` (whose path relative to the top-level volume is `top_path`),
/// children before their parents. `top` itself is not included.
pub fn nested_post_order(fs: BorrowedFd<'_>, top: u64, top_path: &Path) -> Result<Vec<Nested>> {
    Ok(walk(fs, top, top_path)?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// How far apart two ids of one level of the walk may be and still be read in one search:
/// the ids between them belong to other subvolumes, whose items (about 600 bytes each) are
/// read and skipped. 64 of them fill about half of one search's buffer.
const BATCH_GAP: u64 = 64;

/// What [`nested_post_order`] returns, each subvolume with its ROOT_ITEM.
///
/// The tree is read level by level: the ROOT_ITEM, ROOT_BACKREF and ROOT_REF items of a
/// subvolume are next to each other in the root tree (keyed by its id), so one TREE_SEARCH over
/// the ids of a level, from the first one's ROOT_ITEM to the last one's ROOT_REF, yields their
/// flags and their children at once. Siblings are created one after the other and have
/// neighbouring ids: a thousand subvolumes side by side take a few searches, not a thousand.
/// The order is then the same as a depth-first walk from `top` (pre-order, reversed).
pub fn walk(fs: BorrowedFd<'_>, top: u64, top_path: &Path) -> Result<Vec<(Nested, RootItem)>> {
    use std::collections::HashMap;
    // Per subvolume of the tree: its root item, its children (id, dirid, name) in key order.
    let mut root_items: HashMap<u64, RootItem> = HashMap::new();
    let mut kids: HashMap<u64, Vec<(u64, u64, OsString)>> = HashMap::new();
    let mut level = vec![top];
    // Each subvolume is read once, even from a corrupt tree with a loop in it.
    let mut seen = std::collections::HashSet::from([top]);
    while !level.is_empty() {
        level.sort_unstable();
        let mut next = Vec::new();
        let mut start = 0;
        while start < level.len() {
            let mut end = start + 1;
            while end < level.len() && level[end] - level[end - 1] <= BATCH_GAP {
                end += 1;
            }
            let ids = &level[start..end];
            read_level(fs, ids, &mut root_items, &mut kids, &mut next)?;
            start = end;
        }
        next.retain(|id| seen.insert(*id));
        level = next;
    }
    // Pre-order with an explicit stack (chains can be thousands deep), then reversed: in the
    // reversed list every subvolume comes after all of its descendants.
    let mut dirs: HashMap<(u64, u64), Option<Vec<u8>>> = HashMap::new();
    let mut pre = Vec::new();
    let mut stack = vec![(top, top_path.to_path_buf())];
    while let Some((parent, parent_path)) = stack.pop() {
        for (id, dirid, name) in kids.remove(&parent).unwrap_or_default() {
            let dir = match dirs.get(&(parent, dirid)) {
                Some(dir) => dir.clone(),
                None => {
                    let dir = dir_path(fs, parent, dirid, id)?;
                    dirs.insert((parent, dirid), dir.clone());
                    dir
                }
            };
            // The child (or its directory) vanished since the search: nothing to do.
            let Some(dir) = dir else { continue };
            let Some(item) = root_items.get(&id) else {
                continue;
            };
            let mut path = parent_path.clone();
            path.push(OsStr::from_bytes(&dir));
            path.push(&name);
            pre.push((
                Nested {
                    id,
                    parent,
                    path: path.clone(),
                    readonly: item.readonly(),
                },
                *item,
            ));
            stack.push((id, path));
        }
    }
    pre.reverse();
    Ok(pre)
}

/// One search over the root tree items of `ids` (sorted, close together): their root items,
/// and their children, which go to `next`.
fn read_level(
    fs: BorrowedFd<'_>,
    ids: &[u64],
    root_items: &mut std::collections::HashMap<u64, RootItem>,
    kids: &mut std::collections::HashMap<u64, Vec<(u64, u64, OsString)>>,
    next: &mut Vec<u64>,
) -> Result<()> {
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    let context = || format!("cannot list the subvolumes inside subvolume {first}");
    let range = SearchRange {
        tree_id: ROOT_TREE,
        min: (first, BTRFS_ROOT_ITEM_KEY, 0),
        max: (last, BTRFS_ROOT_REF_KEY, u64::MAX),
        min_transid: 0,
    };
    let mut search = TreeSearch::new(fs, range);
    while let Some((header, data)) = search.next().with_context(context)? {
        if ids.binary_search(&header.objectid).is_err() {
            continue;
        }
        match header.item_type {
            BTRFS_ROOT_ITEM_KEY => {
                let item = RootItem::parse(data).with_context(|| {
                    format!("cannot read the root item of subvolume {}", header.objectid)
                })?;
                root_items.insert(header.objectid, item);
            }
            BTRFS_ROOT_REF_KEY => {
                let r = RootRef::parse(data).with_context(|| {
                    format!(
                        "cannot list the subvolumes inside subvolume {}",
                        header.objectid
                    )
                })?;
                let name = OsString::from_vec(r.name.to_vec());
                kids.entry(header.objectid)
                    .or_default()
                    .push((header.offset, r.dirid, name));
                next.push(header.offset);
            }
            _ => {}
        }
    }
    Ok(())
}

/// The path of directory `dirid` inside subvolume `parent` (which holds subvolume `id`), with a
/// trailing `/` unless empty; `None` if it vanished since the search.
fn dir_path(fs: BorrowedFd<'_>, parent: u64, dirid: u64, id: u64) -> Result<Option<Vec<u8>>> {
    if dirid == SUBVOL_ROOT_INO {
        return Ok(Some(Vec::new()));
    }
    match ioctl::ino_lookup(fs, parent, dirid) {
        Ok((_, dir)) => Ok(Some(dir)),
        Err(e) if e.errno == Errno::ENOENT => Ok(None),
        // Deeper than INO_LOOKUP can say (4 KiB): the path is only for messages.
        Err(e) if e.errno == Errno::ENAMETOOLONG => Ok(Some(b"<path too long>/".to_vec())),
        Err(e) => Err(e).with_context(|| {
            format!("cannot find the path of subvolume {id} inside subvolume {parent}")
        }),
    }
}

/// The default subvolume's id, as `btrfs subvolume get-default` reads it: the "default" dir
/// item of the root tree directory. A filesystem that never had one set uses the top level.
pub fn default_id(fs: BorrowedFd<'_>) -> Result<u64> {
    let context = || "cannot read the default subvolume's id";
    let dir = u64::from(BTRFS_ROOT_TREE_DIR_OBJECTID);
    let mut search = TreeSearch::new(fs, SearchRange::of(ROOT_TREE, dir, BTRFS_DIR_ITEM_KEY));
    while let Some((_, data)) = search.next().with_context(context)? {
        for entry in items::dir_entries(data).with_context(context)? {
            if entry.name == b"default" {
                let id = entry.location.0;
                return Ok(if id == 0 { TOP_LEVEL } else { id });
            }
        }
    }
    Ok(TOP_LEVEL)
}

/// Snapshot the subvolume at `source` (a name in the top level `fs`) as `name`, writable.
pub fn snapshot(fs: BorrowedFd<'_>, source: &OsStr, name: &OsStr) -> Result<u64> {
    let src = open_dir(fs, source).with_context(|| format!("cannot open {}", quoted(source)))?;
    ioctl::snap_create(fs, name, src.as_fd(), false)
        .with_context(|| format!("cannot snapshot {} as {}", quoted(source), quoted(name)))?;
    let new = open_dir(fs, name).with_context(|| format!("cannot open {}", quoted(name)))?;
    id_of(new.as_fd())
}
