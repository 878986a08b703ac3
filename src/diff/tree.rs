//! Reading `root`'s tree: which inodes changed since the shared transaction, and their paths.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use linux_raw_sys::btrfs::{BTRFS_INODE_EXTREF_KEY, BTRFS_INODE_ITEM_KEY, BTRFS_INODE_REF_KEY};

use super::ROOT_DIR_INO;
use crate::ioctl::{SearchRange, TreeSearch};
use crate::items::{self, InodeItem};

/// The inodes of subvolume `tree` whose INODE_ITEM was written after transaction `since`
/// (all of them for 0), with whether each is a directory. With `blank` (the tree that shares
/// `since` with `tree`), an inode that the blank has with the same generation and the same
/// ctime is left out: only its access time changed (reading it on a running system).
pub(super) fn changed_inodes(
    fs: BorrowedFd<'_>,
    tree: u64,
    since: u64,
    blank: Option<u64>,
) -> Result<Vec<(u64, bool)>> {
    let mut out = Vec::new();
    let mut atime_only = 0usize;
    let range = SearchRange {
        tree_id: tree,
        min: (ROOT_DIR_INO, BTRFS_INODE_ITEM_KEY, 0),
        max: (u64::MAX, 255, u64::MAX),
        // Leaves written in `since` itself hold what both share (the snapshot's own commit
        // flushes everything written before it); what changed after is in later ones.
        min_transid: if since == 0 { 0 } else { since + 1 },
    };
    let mut search = TreeSearch::new(fs, range);
    while let Some((header, data)) = search
        .next()
        .with_context(|| format!("cannot search the tree of subvolume {tree}"))?
    {
        if header.item_type != BTRFS_INODE_ITEM_KEY {
            continue;
        }
        let inode = InodeItem::parse(data).with_context(|| {
            format!("cannot read inode {} in subvolume {tree}", header.objectid)
        })?;
        if inode.transid <= since {
            continue;
        }
        if let Some(blank) = blank.filter(|_| inode.generation <= since) {
            let theirs = inode_item(fs, blank, header.objectid)?;
            if theirs.is_some_and(|b| b.generation == inode.generation && b.ctime == inode.ctime) {
                atime_only += 1;
                continue;
            }
        }
        out.push((header.objectid, inode.mode & libc::S_IFMT == libc::S_IFDIR));
    }
    if atime_only > 0 {
        log::debug!("{atime_only} inode(s) of subvolume {tree} only had their access time changed");
    }
    Ok(out)
}

/// The INODE_ITEM of inode `ino` in subvolume `tree`, if there is one.
pub(super) fn inode_item(fs: BorrowedFd<'_>, tree: u64, ino: u64) -> Result<Option<InodeItem>> {
    let context = || format!("cannot read inode {ino} of subvolume {tree}");
    let range = SearchRange {
        tree_id: tree,
        min: (ino, BTRFS_INODE_ITEM_KEY, 0),
        max: (ino, BTRFS_INODE_ITEM_KEY, 0),
        min_transid: 0,
    };
    match TreeSearch::first(fs, range).with_context(context)? {
        Some((_, data)) => Ok(Some(InodeItem::parse(&data).with_context(context)?)),
        None => Ok(None),
    }
}

/// Paths of inodes from their INODE_REF/INODE_EXTREF items, directories cached. No length limit
/// (INO_LOOKUP stops at 4 KiB), and every link of a file with several.
pub(super) struct Paths<'a> {
    pub(super) fs: BorrowedFd<'a>,
    pub(super) tree: u64,
    pub(super) dirs: HashMap<u64, PathBuf>,
}

impl Paths<'_> {
    /// The links of inode `ino`: (parent directory, name) of each, in key order.
    pub(super) fn links(&self, ino: u64) -> Result<Vec<(u64, OsString)>> {
        let context = || {
            format!(
                "cannot read the links of inode {ino} in subvolume {}",
                self.tree
            )
        };
        let range = SearchRange {
            tree_id: self.tree,
            min: (ino, BTRFS_INODE_REF_KEY, 0),
            max: (ino, BTRFS_INODE_EXTREF_KEY, u64::MAX),
            min_transid: 0,
        };
        let mut search = TreeSearch::new(self.fs, range);
        let mut out = Vec::new();
        while let Some((header, data)) = search.next().with_context(context)? {
            let refs = match header.item_type {
                BTRFS_INODE_REF_KEY => items::inode_refs(header.offset, data),
                BTRFS_INODE_EXTREF_KEY => items::inode_extrefs(data),
                _ => continue,
            }
            .with_context(context)?;
            for r in refs {
                let name = r.name;
                if !(name.is_empty() || name.contains(&b'/') || name == b"." || name == b"..") {
                    out.push((r.parent, OsString::from_vec(name.to_vec())));
                }
            }
        }
        Ok(out)
    }

    /// Every path of inode `ino` relative to the subvolume (one for a directory); none if it
    /// is not linked anywhere (unlinked but still open, or gone since the search).
    pub(super) fn paths(&mut self, ino: u64, is_dir: bool) -> Result<Vec<PathBuf>> {
        if is_dir || ino == ROOT_DIR_INO {
            return Ok(self.path_of(ino)?.into_iter().collect());
        }
        let mut out = Vec::new();
        for (parent, name) in self.links(ino)? {
            if let Some(dir) = self.path_of(parent)? {
                out.push(dir.join(name));
            }
        }
        Ok(out)
    }

    /// The path of directory `ino` relative to the subvolume (cached, with those above it);
    /// None if it is not linked anywhere.
    pub(super) fn path_of(&mut self, ino: u64) -> Result<Option<PathBuf>> {
        let mut chain: Vec<(u64, OsString)> = Vec::new();
        let mut cur = ino;
        let base = loop {
            if cur == ROOT_DIR_INO {
                break PathBuf::new();
            }
            if let Some(p) = self.dirs.get(&cur) {
                break p.clone();
            }
            if chain.len() > 1 << 16 {
                bail!(
                    "the directories above inode {ino} in subvolume {} form a loop",
                    self.tree
                );
            }
            match self.links(cur)?.into_iter().next() {
                Some((parent, name)) => {
                    chain.push((cur, name));
                    cur = parent;
                }
                None => return Ok(None),
            }
        };
        let mut path = base;
        for (i, (dir, name)) in chain.iter().enumerate().rev() {
            path.push(name);
            if i > 0 {
                self.dirs.insert(*dir, path.clone());
            }
        }
        Ok(Some(path))
    }
}
