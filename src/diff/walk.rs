//! Walking the changed directories of `root` and the blank side by side, and comparing what
//! is at the same path.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result};
use linux_raw_sys::btrfs::BTRFS_EXTENT_DATA_KEY;
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

use super::{absolute, shown, Change, Found, Kind, Pattern, DIR_FLAGS};
use crate::ioctl::{SearchRange, TreeSearch};
use crate::names::quoted;

/// One side of the comparison: a subvolume opened through the read-only mount. Paths are
/// opened one component at a time without following symlinks and without leaving the
/// subvolume.
pub(super) struct Side<'a> {
    pub(super) fd: Rc<OwnedFd>,
    pub(super) dev: u64,
    pub(super) tree: u64,
    pub(super) name: &'a OsStr,
    /// The last directory opened, to open what is below it from there (paths come sorted).
    pub(super) last: RefCell<(PathBuf, Rc<OwnedFd>)>,
}

impl<'a> Side<'a> {
    pub(super) fn new(fd: OwnedFd, tree: u64, name: &'a OsStr) -> Result<Side<'a>> {
        let dev = fstat(&fd)
            .with_context(|| format!("cannot stat {}", quoted(name)))?
            .st_dev;
        let fd = Rc::new(fd);
        Ok(Side {
            last: RefCell::new((PathBuf::new(), fd.clone())),
            fd,
            dev,
            tree,
            name,
        })
    }

    pub(super) fn context(&self, what: &str, rel: &Path) -> String {
        format!("cannot {what} {} in {}", shown(rel), quoted(self.name))
    }

    /// The directory at `rel`; None if it is missing, not a directory, or another subvolume.
    pub(super) fn dir(&self, rel: &Path) -> Result<Option<Rc<OwnedFd>>> {
        let (mut cur, rest) = {
            let last = self.last.borrow();
            match rel.strip_prefix(&last.0) {
                Ok(rest) => (last.1.clone(), rest.to_path_buf()),
                Err(_) => (self.fd.clone(), rel.to_path_buf()),
            }
        };
        if rest.as_os_str().is_empty() {
            return Ok(Some(cur));
        }
        for component in rest.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            cur = match openat(&*cur, name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Rc::new(fd),
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
                Err(e) => return Err(e).with_context(|| self.context("open", rel)),
            };
            let st = fstat(&*cur).with_context(|| self.context("stat", rel))?;
            if st.st_dev != self.dev {
                return Ok(None);
            }
        }
        *self.last.borrow_mut() = (rel.to_path_buf(), cur.clone());
        Ok(Some(cur))
    }

    pub(super) fn lstat(&self, rel: &Path) -> Result<Option<FileStat>> {
        let Some(name) = rel.file_name() else {
            return Ok(Some(
                fstat(&self.fd).with_context(|| self.context("stat", rel))?,
            ));
        };
        let Some(parent) = self.dir(rel.parent().unwrap_or(Path::new("")))? else {
            return Ok(None);
        };
        match fstatat(&*parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e).with_context(|| self.context("stat", rel)),
        }
    }

    pub(super) fn readlink(&self, rel: &Path) -> Result<Option<OsString>> {
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Ok(None);
        };
        let Some(parent) = self.dir(parent)? else {
            return Ok(None);
        };
        match readlinkat(&*parent, name) {
            Ok(target) => Ok(Some(target)),
            Err(Errno::ENOENT | Errno::EINVAL) => Ok(None),
            Err(e) => Err(e).with_context(|| self.context("read the link", rel)),
        }
    }

    pub(super) fn open(&self, rel: &Path) -> Result<Option<File>> {
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Ok(None);
        };
        let Some(parent) = self.dir(parent)? else {
            return Ok(None);
        };
        // O_NONBLOCK: a file swapped for a FIFO since it was looked at (root is a live system
        // when `diff` runs) must not make the open wait for a writer; what is not a regular
        // file now is not compared (it changed).
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY
            | OFlag::O_NONBLOCK;
        match openat(&*parent, name, flags, Mode::empty()) {
            Ok(fd) => {
                let st = fstat(&fd).with_context(|| self.context("open", rel))?;
                let regular =
                    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG;
                Ok(regular.then(|| File::from(fd)))
            }
            Err(Errno::ENOENT | Errno::ELOOP) => Ok(None),
            Err(e) => Err(e).with_context(|| self.context("open", rel)),
        }
    }

    /// The names in the directory at `rel` with their inode numbers; None if it is not one.
    pub(super) fn list(&self, rel: &Path) -> Result<Option<BTreeMap<OsString, u64>>> {
        let Some(fd) = self.dir(rel)? else {
            return Ok(None);
        };
        // A descriptor of its own: reading moves its position.
        let fd = openat(&*fd, ".", DIR_FLAGS, Mode::empty())
            .with_context(|| self.context("open", rel))?;
        let mut dir = nix::dir::Dir::from_fd(fd).with_context(|| self.context("read", rel))?;
        let mut out = BTreeMap::new();
        for entry in dir.iter() {
            let entry = entry.with_context(|| self.context("read", rel))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.insert(OsString::from_vec(name.to_vec()), entry.ino());
            }
        }
        Ok(Some(out))
    }

    /// The EXTENT_DATA items of inode `ino`: (file offset, raw item).
    pub(super) fn extents(&self, fs: BorrowedFd<'_>, ino: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let range = SearchRange::of(self.tree, ino, BTRFS_EXTENT_DATA_KEY);
        let items = TreeSearch::all(fs, range).with_context(|| {
            format!(
                "cannot read the extents of inode {ino} in {}",
                quoted(self.name)
            )
        })?;
        Ok(items
            .into_iter()
            .map(|(h, data)| (h.offset, data))
            .collect())
    }
}

/// The comparison in progress.
pub(super) struct Walk<'a> {
    pub(super) fs: BorrowedFd<'a>,
    pub(super) root: Side<'a>,
    pub(super) blank: Side<'a>,
    pub(super) patterns: &'a [Pattern],
    /// Paths of the subvolumes nested directly in root (reported on their own, never entered).
    pub(super) subvolumes: HashSet<PathBuf>,
    /// New directories already walked whole.
    pub(super) walked: HashSet<PathBuf>,
    /// Paths already compared with the blank.
    pub(super) compared: HashSet<PathBuf>,
    pub(super) entries: BTreeMap<PathBuf, Found>,
}

impl Walk<'_> {
    pub(super) fn excluded(&self, rel: &Path) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        // The path and each directory above it, as `/a`, `/a/b`, ...
        let abs = absolute(rel);
        let bytes = abs.as_bytes();
        (1..=bytes.len())
            .filter(|&end| end == bytes.len() || bytes[end] == b'/')
            .any(|end| self.patterns.iter().any(|p| p.matches(&bytes[..end])))
    }

    pub(super) fn inside_walked(&self, rel: &Path) -> bool {
        rel.ancestors().any(|a| self.walked.contains(a))
    }

    /// A changed directory of root: list it on both sides.
    pub(super) fn directory(&mut self, dir: &Path) -> Result<()> {
        if self.inside_walked(dir) {
            return Ok(());
        }
        let Some(mine) = self.root.list(dir)? else {
            return Ok(());
        };
        let Some(theirs) = self.blank.list(dir)? else {
            // Not a directory in the blank: new, or in the place of something else; either
            // way, all it holds is new.
            self.compare(dir)?;
            if !self.inside_walked(dir) {
                self.walked.insert(dir.to_path_buf());
                for name in mine.keys() {
                    let path = dir.join(name);
                    if !self.excluded(&path) && !self.subvolumes.contains(&path) {
                        self.add_new(&path)?;
                    }
                }
            }
            return Ok(());
        };
        for (name, ino) in &mine {
            let path = dir.join(name);
            if self.excluded(&path) || self.subvolumes.contains(&path) {
                continue;
            }
            match theirs.get(name) {
                None => self.add_new(&path)?,
                Some(other) if other != ino => self.compare(&path)?,
                Some(_) => {}
            }
        }
        for name in theirs.keys().filter(|n| !mine.contains_key(*n)) {
            let path = dir.join(name);
            if self.excluded(&path) {
                continue;
            }
            if let Some(st) = self.blank.lstat(&path)? {
                self.entries
                    .insert(path, Found::new(Change::Gone, Kind::of(&st)));
            }
        }
        Ok(())
    }

    /// A path of root that the blank does not have: it and all it holds are new.
    pub(super) fn add_new(&mut self, rel: &Path) -> Result<()> {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(path) = stack.pop() {
            let Some(st) = self.root.lstat(&path)? else {
                continue;
            };
            let kind = Kind::of(&st);
            self.entries
                .insert(path.clone(), Found::new(Change::New, kind));
            if kind != Kind::Dir || self.walked.contains(&path) {
                continue;
            }
            self.walked.insert(path.clone());
            for name in self.root.list(&path)?.unwrap_or_default().into_keys() {
                let child = path.join(name);
                if !self.excluded(&child) && !self.subvolumes.contains(&child) {
                    stack.push(child);
                }
            }
        }
        Ok(())
    }

    /// A changed path of root: compare it with the same path in the blank.
    pub(super) fn compare(&mut self, rel: &Path) -> Result<()> {
        if self.entries.contains_key(rel)
            || self.inside_walked(rel)
            || !self.compared.insert(rel.to_path_buf())
        {
            return Ok(());
        }
        let Some(mine) = self.root.lstat(rel)? else {
            return Ok(());
        };
        let Some(theirs) = self.blank.lstat(rel)? else {
            return self.add_new(rel);
        };
        let (kind, was) = (Kind::of(&mine), Kind::of(&theirs));
        let change = if kind != was || !self.same_content(rel, kind, &mine, &theirs)? {
            Some(Change::Changed)
        } else if same_metadata(kind, &mine, &theirs) {
            None
        } else {
            Some(Change::Metadata)
        };
        if let Some(change) = change {
            let mut found = Found::new(change, kind);
            found.was = (kind != was).then_some(was);
            self.entries.insert(rel.to_path_buf(), found);
        }
        Ok(())
    }

    pub(super) fn same_content(
        &self,
        rel: &Path,
        kind: Kind,
        mine: &FileStat,
        theirs: &FileStat,
    ) -> Result<bool> {
        match kind {
            Kind::Dir => Ok(true),
            Kind::Symlink => Ok(self.root.readlink(rel)? == self.blank.readlink(rel)?),
            Kind::Other => Ok(mine.st_rdev == theirs.st_rdev),
            Kind::File => {
                if mine.st_size != theirs.st_size {
                    return Ok(false);
                }
                // Equal extent items reference the same data on disk (or hold the same inline
                // data): no need to read it.
                if self.root.extents(self.fs, mine.st_ino)?
                    == self.blank.extents(self.fs, theirs.st_ino)?
                {
                    return Ok(true);
                }
                let (Some(a), Some(b)) = (self.root.open(rel)?, self.blank.open(rel)?) else {
                    return Ok(false);
                };
                same_bytes(a, b).with_context(|| {
                    format!(
                        "cannot read {} in {} and {}",
                        shown(rel),
                        quoted(self.root.name),
                        quoted(self.blank.name)
                    )
                })
            }
        }
    }
}

/// Mode and owner, and for anything but a directory the modification time.
pub(super) fn same_metadata(kind: Kind, a: &FileStat, b: &FileStat) -> bool {
    a.st_mode == b.st_mode
        && a.st_uid == b.st_uid
        && a.st_gid == b.st_gid
        && (kind == Kind::Dir || (a.st_mtime, a.st_mtime_nsec) == (b.st_mtime, b.st_mtime_nsec))
}

pub(super) fn same_bytes(mut a: File, mut b: File) -> std::io::Result<bool> {
    let (mut x, mut y) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

pub(super) fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
