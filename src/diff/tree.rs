//! Reading `root`'s tree: which inodes changed since the shared transaction, and their paths.

use super::*;

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
    let mut range = SearchRange {
        tree_id: tree,
        min: (ROOT_DIR_INO, BTRFS_INODE_ITEM_KEY, 0),
        max: (u64::MAX, 255, u64::MAX),
        // Leaves written in `since` itself hold what both share (the snapshot's own commit
        // flushes everything written before it); what changed after is in later ones.
        min_transid: if since == 0 { 0 } else { since + 1 },
    };
    loop {
        let items = ioctl::tree_search(fs, &range)
            .with_context(|| format!("cannot search the tree of subvolume {tree}"))?;
        let Some(last) = items.last() else { break };
        let next = next_key((last.objectid, last.item_type, last.offset));
        for item in items.iter().filter(|i| i.item_type == BTRFS_INODE_ITEM_KEY) {
            let inode = InodeItem::parse(&item.data).with_context(|| {
                format!(
                    "short INODE_ITEM for inode {} in subvolume {tree}",
                    item.objectid
                )
            })?;
            if inode.transid <= since {
                continue;
            }
            if let Some(blank) = blank.filter(|_| inode.generation <= since) {
                let theirs = inode_item(fs, blank, item.objectid)?;
                if theirs
                    .is_some_and(|b| b.generation == inode.generation && b.ctime == inode.ctime)
                {
                    atime_only += 1;
                    continue;
                }
            }
            out.push((item.objectid, inode.mode & libc::S_IFMT == libc::S_IFDIR));
        }
        match next {
            Some(key) => range.min = key,
            None => break,
        }
    }
    if atime_only > 0 {
        log::debug!("{atime_only} inode(s) of subvolume {tree} only had their access time changed");
    }
    Ok(out)
}

/// The fields of a btrfs_inode_item this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InodeItem {
    pub(super) generation: u64,
    pub(super) transid: u64,
    pub(super) mode: u32,
    /// Seconds and nanoseconds, as stored.
    pub(super) ctime: [u8; 12],
}

impl InodeItem {
    pub(super) fn parse(d: &[u8]) -> Option<InodeItem> {
        use std::mem::offset_of;
        if d.len() < std::mem::size_of::<btrfs_inode_item>() {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(d[at..at + 8].try_into().unwrap());
        let mode_at = offset_of!(btrfs_inode_item, mode);
        let ctime_at = offset_of!(btrfs_inode_item, ctime);
        Some(InodeItem {
            generation: u64_at(offset_of!(btrfs_inode_item, generation)),
            transid: u64_at(offset_of!(btrfs_inode_item, transid)),
            mode: u32::from_le_bytes(d[mode_at..mode_at + 4].try_into().unwrap()),
            ctime: d[ctime_at..ctime_at + 12].try_into().unwrap(),
        })
    }
}

/// The INODE_ITEM of inode `ino` in subvolume `tree`, if there is one.
pub(super) fn inode_item(fs: BorrowedFd<'_>, tree: u64, ino: u64) -> Result<Option<InodeItem>> {
    let range = SearchRange {
        tree_id: tree,
        min: (ino, BTRFS_INODE_ITEM_KEY, 0),
        max: (ino, BTRFS_INODE_ITEM_KEY, 0),
        min_transid: 0,
    };
    let items = ioctl::tree_search(fs, &range)
        .with_context(|| format!("cannot read inode {ino} of subvolume {tree}"))?;
    Ok(items
        .iter()
        .find(|i| i.item_type == BTRFS_INODE_ITEM_KEY)
        .and_then(|i| InodeItem::parse(&i.data)))
}

/// The key right after `key`, in the kernel's order.
pub(super) fn next_key((objectid, item_type, offset): (u64, u32, u64)) -> Option<(u64, u32, u64)> {
    if offset < u64::MAX {
        Some((objectid, item_type, offset + 1))
    } else if item_type < 255 {
        Some((objectid, item_type + 1, 0))
    } else if objectid < u64::MAX {
        Some((objectid + 1, 0, 0))
    } else {
        None
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
    /// The links of inode `ino`: (parent directory, name) of each, in key order, and whether
    /// some were not readable (an item too big for TREE_SEARCH's buffer, which comes back
    /// without its payload: many links of one file in one directory).
    pub(super) fn links(&self, ino: u64) -> Result<(Vec<(u64, OsString)>, bool)> {
        let mut out = Vec::new();
        let mut truncated = false;
        let mut range = SearchRange {
            tree_id: self.tree,
            min: (ino, BTRFS_INODE_REF_KEY, 0),
            max: (ino, BTRFS_INODE_EXTREF_KEY, u64::MAX),
            min_transid: 0,
        };
        loop {
            let items = ioctl::tree_search(self.fs, &range).with_context(|| {
                format!(
                    "cannot read the links of inode {ino} in subvolume {}",
                    self.tree
                )
            })?;
            let Some(last) = items.last() else { break };
            let next = next_key((last.objectid, last.item_type, last.offset));
            for item in &items {
                // One item holds one or more packed entries. INODE_REF (key offset = the
                // parent): index u64, name_len u16, name. INODE_EXTREF: parent u64, index u64,
                // name_len u16, name.
                let extref = match item.item_type {
                    BTRFS_INODE_REF_KEY => false,
                    BTRFS_INODE_EXTREF_KEY => true,
                    _ => continue,
                };
                let mut d = &item.data[..];
                truncated |= d.is_empty();
                loop {
                    let (parent, at) = match extref {
                        false if d.len() >= 10 => (item.offset, 8),
                        true if d.len() >= 18 => {
                            (u64::from_le_bytes(d[0..8].try_into().unwrap()), 16)
                        }
                        _ => break,
                    };
                    let len = u16::from_le_bytes(d[at..at + 2].try_into().unwrap()) as usize;
                    let Some(name) = d.get(at + 2..at + 2 + len) else {
                        break;
                    };
                    if !(name.is_empty() || name.contains(&b'/') || name == b"." || name == b"..") {
                        out.push((parent, OsString::from_vec(name.to_vec())));
                    }
                    d = &d[at + 2 + len..];
                }
            }
            match next {
                Some(key) => range.min = key,
                None => break,
            }
        }
        Ok((out, truncated))
    }

    /// Every path of inode `ino` relative to the subvolume (one for a directory); none if it
    /// is not linked anywhere (unlinked but still open, or gone since the search).
    pub(super) fn paths(&mut self, ino: u64, is_dir: bool) -> Result<Vec<PathBuf>> {
        if is_dir || ino == ROOT_DIR_INO {
            return Ok(self.path_of(ino)?.into_iter().collect());
        }
        let mut out = Vec::new();
        let (links, truncated) = self.links(ino)?;
        for (parent, name) in links {
            if let Some(dir) = self.path_of(parent)? {
                out.push(dir.join(name));
            }
        }
        if truncated {
            // INO_LOOKUP reads the item in the kernel: one path at least ("dir/file/").
            if let Ok((_, path)) = ioctl::ino_lookup(self.fs, self.tree, ino) {
                let path =
                    PathBuf::from(OsStr::from_bytes(path.strip_suffix(b"/").unwrap_or(&path)));
                if !path.as_os_str().is_empty() && !out.contains(&path) {
                    out.push(path);
                }
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
            match self.links(cur)?.0.into_iter().next() {
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
