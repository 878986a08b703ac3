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

/// The little-endian u64 at `offset` in subvolume `id`'s ROOT_ITEM (an
/// `offset_of!(btrfs_root_item, field)`). `None` if the subvolume no longer exists.
pub fn root_item_u64(fs: BorrowedFd<'_>, id: u64, offset: usize) -> Result<Option<u64>> {
    let range = SearchRange::of(ROOT_TREE, id, BTRFS_ROOT_ITEM_KEY);
    let Some((_, data)) = TreeSearch::first(fs, range)
        .with_context(|| format!("cannot read the root item of subvolume {id}"))?
    else {
        return Ok(None);
    };
    let value = data
        .get(offset..offset.saturating_add(8))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .with_context(|| format!("short root item for subvolume {id}"))?;
    Ok(Some(value))
}

/// Whether subvolume `id` is read-only, from its ROOT_ITEM. `None` if it no longer exists.
pub fn readonly(fs: BorrowedFd<'_>, id: u64) -> Result<Option<bool>> {
    Ok(root_item(fs, id)?.map(|r| r.readonly()))
}

/// Every subvolume below `top` (whose path relative to the top-level volume is `top_path`),
/// children before their parents. `top` itself is not included.
pub fn nested_post_order(fs: BorrowedFd<'_>, top: u64, top_path: &Path) -> Result<Vec<Nested>> {
    // Pre-order with an explicit stack (chains can be thousands deep), then reversed: in the
    // reversed list every subvolume comes after all of its descendants.
    let mut pre = Vec::new();
    let mut stack = vec![(top, top_path.to_path_buf())];
    while let Some((parent, parent_path)) = stack.pop() {
        for (id, dirid, name) in children(fs, parent)? {
            let dir = match ioctl::ino_lookup(fs, parent, dirid) {
                Ok((_, dir)) => dir,
                // The child (or its directory) vanished since the search: nothing to do.
                Err(e) if e.errno == Errno::ENOENT => continue,
                // Deeper than INO_LOOKUP can say (4 KiB): the path is only for messages.
                Err(e) if e.errno == Errno::ENAMETOOLONG => b"<path too long>/".to_vec(),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot find the path of subvolume {id} inside subvolume {parent}")
                    })
                }
            };
            let mut path = parent_path.clone();
            path.push(OsStr::from_bytes(&dir));
            path.push(&name);
            let Some(readonly) = readonly(fs, id)? else {
                continue;
            };
            pre.push(Nested {
                id,
                parent,
                path: path.clone(),
                readonly,
            });
            stack.push((id, path));
        }
    }
    pre.reverse();
    Ok(pre)
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
