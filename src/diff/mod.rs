//! `btrfs-rollback diff`: what the next rollback erases.
//!
//! How, in the way `btrfs subvolume find-new` does it:
//!
//! 1. `root` and the blank share every tree block written before one transaction: the creation
//!    of `root` as a snapshot of the blank (GET_SUBVOL_INFO `otransid` of `root`), or of the
//!    blank as a snapshot of `root` (an install before its first rollback). A TREE_SEARCH over
//!    `root`'s tree with `min_transid` just above it reads only the leaves written since; the
//!    INODE_ITEMs there with `transid` greater than it are the inodes changed (or created)
//!    since; those the blank has with the same generation and ctime only had their access
//!    time changed and are dropped. The paths of the others come from their
//!    INODE_REF/INODE_EXTREF items, walked up to the subvolume's root directory. If neither
//!    is a snapshot of the other, or the blank was written after that transaction (a
//!    writable blank), every inode is looked at (slower, same result) and a warning says so.
//! 2. Every changed directory is listed on both sides, through a read-only mount of the top
//!    level: names only in `root` are new (a new directory is walked: all of it is new), names
//!    only in the blank are gone (reported once, not what was below them), a name in both that
//!    leads to another inode is compared.
//! 3. A changed inode that is at a path the blank also has is compared with it: another type,
//!    another size, another symlink target or other bytes is "changed"; the same content with
//!    another mode, owner or modification time is "metadata" (for directories mode and owner
//!    only: their times follow their entries, which are reported themselves). Content is read
//!    only when the sizes match and the file's extent items differ from the blank's (equal
//!    extent items are the same data on disk). Access times, ctime and xattrs are ignored.
//! 4. The subvolumes nested directly in `root` are reported one entry each (with how many are
//!    nested inside them), not their files: the rollback deletes them whole.
//! 5. `--exclude` patterns are matched against paths as the running system sees them
//!    (`/etc/foo`); see [`Pattern`].
//!
//! Nothing is changed: the top level is mounted read-only (so reading does not even update
//! access times) and unmounted. A `syncfs` first commits what a running system still holds in
//! memory, so that the tree search sees it. The exit status is 0 whether or not anything
//! differs.
//!
//! Text output: one line per entry, sorted by path (a directory before what is in it), then a
//! summary line. Paths holding spaces, quotes, backslashes, control characters or bytes that
//! are not UTF-8 are shown in double quotes with Rust escapes (`"/tmp/a b"`, `"/x\ny"`,
//! `"/\xFF"`).
//!
//! ```text
//! + /var/log/new                       new (a new directory is followed by all it holds)
//! ~ /etc/changed                       changed content (or type: "(was a directory)")
//! * /etc/touched (metadata only)       same content, other mode, owner or mtime
//! - /etc/gone                          in the blank, not in root
//! @ /var/lib/docker (subvolume, erased whole)
//! @ /var/lib/machines (subvolume, erased whole with 3 nested)
//! 1 new, 1 changed, 1 metadata only, 1 gone, 2 subvolumes
//! ```
//!
//! JSON output (`--json`), a stable shape; keys appear in this order:
//!
//! ```text
//! {
//!   "root": "root",                  the names given (--root, --blank)
//!   "blank": "root-blank",
//!   "root_id": 256,                  their subvolume ids
//!   "blank_id": 257,
//!   "since_transid": 12,             the shared transaction; null when everything was
//!                                    compared (not snapshots of one another, or the blank
//!                                    was written after root was made from it)
//!   "entries": [                     sorted by path like the text output
//!     {"path": "/etc/x", "change": "new", "kind": "file"},
//!     {"path": "/etc/y", "change": "changed", "kind": "symlink", "was": "file"},
//!     {"path": "/var/lib/machines", "change": "subvolume", "kind": "dir", "id": 260, "nested": 3}
//!   ],
//!   "summary": {"new": 1, "changed": 1, "metadata": 0, "gone": 0, "subvolumes": 1}
//! }
//! ```
//!
//! `change` is one of `new`, `changed`, `metadata`, `gone`, `subvolume`; `kind` (what is in
//! `root`, or for `gone` what was in the blank) is one of `file`, `dir`, `symlink`, `other`.
//! `was` appears only on `changed` entries whose type changed; `id` and `nested` only on
//! `subvolume` entries. Paths start with `/`; bytes that are not UTF-8 become U+FFFD.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use linux_raw_sys::btrfs::{
    btrfs_inode_item, BTRFS_EXTENT_DATA_KEY, BTRFS_FIRST_FREE_OBJECTID, BTRFS_INODE_EXTREF_KEY,
    BTRFS_INODE_ITEM_KEY, BTRFS_INODE_REF_KEY,
};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

mod pattern;

pub use pattern::Pattern;

use crate::ioctl::{self, SearchRange, SubvolInfo};
use crate::json::Json;
use crate::names::{quoted, Names};
use crate::rollback::{self, Target};
use crate::subvolume::{self, Entry};

/// The inode number of a subvolume's root directory.
const ROOT_DIR_INO: u64 = BTRFS_FIRST_FREE_OBJECTID as u64;

/// How directories are opened: never through a symlink.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// `btrfs-rollback diff`.
pub fn diff(target: &Target, exclude: &[String], json: bool) -> Result<()> {
    let patterns = exclude
        .iter()
        .map(|p| Pattern::new(p))
        .collect::<Result<Vec<_>>>()?;
    let (top, described) = rollback::open(target, true)?;
    let names = &target.names;
    let start = Instant::now();
    let report = compare(top.fd(), names, &patterns).with_context(|| {
        format!(
            "cannot compare {} with {} on {described}",
            quoted(&names.root),
            quoted(&names.blank)
        )
    })?;
    log::debug!(
        "compared {} with {} in {:.2} s",
        quoted(&names.root),
        quoted(&names.blank),
        start.elapsed().as_secs_f64()
    );
    let out = if json {
        report.json(names).to_string_pretty()
    } else {
        report.text()
    };
    print!("{out}");
    Ok(())
}

/// What a path in `root` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    fn of(st: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "symlink",
            Kind::Other => "other",
        }
    }

    fn article(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Other => "a special file",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    New,
    Changed,
    Metadata,
    Gone,
    Subvolume,
}

impl Change {
    fn name(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Metadata => "metadata",
            Change::Gone => "gone",
            Change::Subvolume => "subvolume",
        }
    }

    fn symbol(self) -> char {
        match self {
            Change::New => '+',
            Change::Changed => '~',
            Change::Metadata => '*',
            Change::Gone => '-',
            Change::Subvolume => '@',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    change: Change,
    kind: Kind,
    /// For `Changed`: the blank's type, when it differs.
    was: Option<Kind>,
    /// For `Subvolume`: its id and how many subvolumes are nested in it.
    subvolume: Option<(u64, usize)>,
}

impl Found {
    fn new(change: Change, kind: Kind) -> Found {
        Found {
            change,
            kind,
            was: None,
            subvolume: None,
        }
    }
}

/// The differences, by path relative to `root` (empty for its root directory).
struct Report {
    root_id: u64,
    blank_id: u64,
    since: Option<u64>,
    entries: BTreeMap<PathBuf, Found>,
}

impl Report {
    fn count(&self, change: Change) -> usize {
        self.entries.values().filter(|f| f.change == change).count()
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (path, found) in &self.entries {
            let _ = write!(out, "{} {}", found.change.symbol(), shown(path));
            match (found.change, found.was, found.subvolume) {
                (Change::Changed, Some(was), _) => {
                    let _ = write!(out, " (was {})", was.article());
                }
                (Change::Metadata, _, _) => out.push_str(" (metadata only)"),
                (Change::Subvolume, _, Some((_, 0))) => out.push_str(" (subvolume, erased whole)"),
                (Change::Subvolume, _, Some((_, n))) => {
                    let _ = write!(out, " (subvolume, erased whole with {n} nested)");
                }
                _ => {}
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{} new, {} changed, {} metadata only, {} gone, {} subvolumes",
            self.count(Change::New),
            self.count(Change::Changed),
            self.count(Change::Metadata),
            self.count(Change::Gone),
            self.count(Change::Subvolume),
        );
        out
    }

    fn json(&self, names: &Names) -> Json {
        let entries = self
            .entries
            .iter()
            .map(|(path, found)| {
                let mut fields = vec![
                    ("path", Json::os(absolute(path))),
                    ("change", Json::str(found.change.name())),
                    ("kind", Json::str(found.kind.name())),
                ];
                if let Some(was) = found.was {
                    fields.push(("was", Json::str(was.name())));
                }
                if let Some((id, nested)) = found.subvolume {
                    fields.push(("id", Json::id(id)));
                    fields.push(("nested", Json::Int(nested as i64)));
                }
                Json::Object(fields)
            })
            .collect();
        let count = |c| Json::Int(self.count(c) as i64);
        Json::Object(vec![
            ("root", Json::os(&names.root)),
            ("blank", Json::os(&names.blank)),
            ("root_id", Json::id(self.root_id)),
            ("blank_id", Json::id(self.blank_id)),
            ("since_transid", self.since.map_or(Json::Null, Json::id)),
            ("entries", Json::Array(entries)),
            (
                "summary",
                Json::Object(vec![
                    ("new", count(Change::New)),
                    ("changed", count(Change::Changed)),
                    ("metadata", count(Change::Metadata)),
                    ("gone", count(Change::Gone)),
                    ("subvolumes", count(Change::Subvolume)),
                ]),
            ),
        ])
    }
}

/// `/` followed by the path relative to `root`: the path as the running system sees it.
fn absolute(rel: &Path) -> OsString {
    let mut s = OsString::from("/");
    s.push(rel.as_os_str());
    s
}

/// A path for the text output: as is when plain, else in quotes with escapes.
fn shown(rel: &Path) -> String {
    let abs = absolute(rel);
    match abs.to_str() {
        Some(s)
            if !s
                .chars()
                .any(|c| c.is_control() || matches!(c, ' ' | '"' | '\\')) =>
        {
            s.to_string()
        }
        _ => format!("{:?}", abs.as_os_str()),
    }
}

/// The subvolume called `name` in the top level, with its info, or a clear error.
fn subvolume_info(fs: BorrowedFd<'_>, name: &OsStr, role: &str) -> Result<(OwnedFd, SubvolInfo)> {
    let id = match subvolume::entry(fs, name)? {
        Entry::Subvolume { id, .. } => id,
        Entry::Missing if role == "root" => bail!(
            "the root subvolume {} does not exist in the top-level volume: there is nothing \
             to compare (the next run creates it from the blank)",
            quoted(name)
        ),
        Entry::Missing => bail!(
            "the blank snapshot {} does not exist in the top-level volume: there is nothing \
             to compare with",
            quoted(name)
        ),
        other => bail!(
            "{} is {other}: the {role} must be a subvolume",
            quoted(name)
        ),
    };
    let fd = subvolume::expect(fs, name, id)?;
    let info = ioctl::get_subvol_info(fd.as_fd())
        .with_context(|| format!("cannot read the subvolume info of {}", quoted(name)))?;
    Ok((fd, info))
}

fn compare(fs: BorrowedFd<'_>, names: &Names, patterns: &[Pattern]) -> Result<Report> {
    let (root_fd, root_info) = subvolume_info(fs, &names.root, "root")?;
    let (blank_fd, blank_info) = subvolume_info(fs, &names.blank, "blank")?;
    // A running system keeps recent changes in memory (delayed inode items) until the next
    // commit; the tree search reads the trees. Commit them, as `sync` would.
    if let Err(e) = nix::unistd::syncfs(fs) {
        log::debug!("syncfs failed ({e}); recent changes may be missed");
    }
    let related = |a: &SubvolInfo, b: &SubvolInfo| a.parent_uuid == b.uuid && b.uuid != [0; 16];
    let shared = if related(&root_info, &blank_info) {
        Some(root_info.otransid)
    } else if related(&blank_info, &root_info) {
        Some(blank_info.otransid)
    } else {
        None
    };
    // The blank's generation is the last transaction that wrote its tree: what it shares with
    // root, or later if it was changed since (a writable blank), which root's tree cannot show.
    let since = match shared {
        Some(t) if blank_info.generation <= t => Some(t),
        Some(_) => {
            log::warn!(
                "{} was changed after {} was made from it: comparing every file, which takes \
                 longer",
                quoted(&names.blank),
                quoted(&names.root)
            );
            None
        }
        None => {
            log::warn!(
                "{} and {} are not snapshots of one another: comparing every file, which takes \
                 longer",
                quoted(&names.root),
                quoted(&names.blank)
            );
            None
        }
    };
    log::debug!(
        "{} (ID {}, created in transaction {}), {} (ID {}, created in {}, last written in {})",
        quoted(&names.root),
        root_info.id,
        root_info.otransid,
        quoted(&names.blank),
        blank_info.id,
        blank_info.otransid,
        blank_info.generation
    );
    let root = Side::new(root_fd, root_info.id, &names.root)?;
    let blank = Side::new(blank_fd, blank_info.id, &names.blank)?;
    let mut walk = Walk {
        fs,
        root,
        blank,
        patterns,
        subvolumes: HashSet::new(),
        walked: HashSet::new(),
        compared: HashSet::new(),
        entries: BTreeMap::new(),
    };

    // Nested subvolumes: the direct children of root, each with what is nested in it.
    let root_name = Path::new(&names.root);
    let nested = subvolume::nested_post_order(fs, root_info.id, root_name)?;
    for n in nested.iter().filter(|n| n.parent == root_info.id) {
        let rel = n
            .path
            .strip_prefix(root_name)
            .unwrap_or(&n.path)
            .to_path_buf();
        walk.subvolumes.insert(rel.clone());
        if walk.excluded(&rel) {
            continue;
        }
        let inside = nested
            .iter()
            .filter(|m| m.id != n.id && m.path.starts_with(&n.path))
            .count();
        let mut found = Found::new(Change::Subvolume, Kind::Dir);
        found.subvolume = Some((n.id, inside));
        walk.entries.insert(rel, found);
    }

    let started = Instant::now();
    let changed = changed_inodes(
        fs,
        root_info.id,
        since.unwrap_or(0),
        since.map(|_| blank_info.id),
    )?;
    log::debug!(
        "{} inode(s) of {} changed since transaction {} ({:.2} s)",
        changed.len(),
        quoted(&names.root),
        since.unwrap_or(0),
        started.elapsed().as_secs_f64()
    );
    let mut paths = Paths {
        fs,
        tree: root_info.id,
        dirs: HashMap::new(),
    };
    let mut dirs = Vec::new();
    let mut others = Vec::new();
    for (ino, is_dir) in changed {
        for path in paths.paths(ino, is_dir)? {
            if walk.excluded(&path) {
                continue;
            }
            if is_dir {
                dirs.push(path);
            } else {
                others.push(path);
            }
        }
    }
    // Parents before children, so a new directory is walked before its changed subdirectories.
    dirs.sort();
    others.sort();
    for dir in &dirs {
        walk.directory(dir)?;
    }
    for path in dirs.iter().chain(&others) {
        walk.compare(path)?;
    }
    Ok(Report {
        root_id: root_info.id,
        blank_id: blank_info.id,
        since,
        entries: walk.entries,
    })
}

/// The inodes of subvolume `tree` whose INODE_ITEM was written after transaction `since`
/// (all of them for 0), with whether each is a directory. With `blank` (the tree that shares
/// `since` with `tree`), an inode that the blank has with the same generation and the same
/// ctime is left out: only its access time changed (reading it on a running system).
fn changed_inodes(
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
struct InodeItem {
    generation: u64,
    transid: u64,
    mode: u32,
    /// Seconds and nanoseconds, as stored.
    ctime: [u8; 12],
}

impl InodeItem {
    fn parse(d: &[u8]) -> Option<InodeItem> {
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
fn inode_item(fs: BorrowedFd<'_>, tree: u64, ino: u64) -> Result<Option<InodeItem>> {
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
fn next_key((objectid, item_type, offset): (u64, u32, u64)) -> Option<(u64, u32, u64)> {
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
struct Paths<'a> {
    fs: BorrowedFd<'a>,
    tree: u64,
    dirs: HashMap<u64, PathBuf>,
}

impl Paths<'_> {
    /// The links of inode `ino`: (parent directory, name) of each, in key order, and whether
    /// some were not readable (an item too big for TREE_SEARCH's buffer, which comes back
    /// without its payload: many links of one file in one directory).
    fn links(&self, ino: u64) -> Result<(Vec<(u64, OsString)>, bool)> {
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
    fn paths(&mut self, ino: u64, is_dir: bool) -> Result<Vec<PathBuf>> {
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
    fn path_of(&mut self, ino: u64) -> Result<Option<PathBuf>> {
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

/// One side of the comparison: a subvolume opened through the read-only mount. Paths are
/// opened one component at a time without following symlinks and without leaving the
/// subvolume.
struct Side<'a> {
    fd: Rc<OwnedFd>,
    dev: u64,
    tree: u64,
    name: &'a OsStr,
    /// The last directory opened, to open what is below it from there (paths come sorted).
    last: RefCell<(PathBuf, Rc<OwnedFd>)>,
}

impl<'a> Side<'a> {
    fn new(fd: OwnedFd, tree: u64, name: &'a OsStr) -> Result<Side<'a>> {
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

    fn context(&self, what: &str, rel: &Path) -> String {
        format!("cannot {what} {} in {}", shown(rel), quoted(self.name))
    }

    /// The directory at `rel`; None if it is missing, not a directory, or another subvolume.
    fn dir(&self, rel: &Path) -> Result<Option<Rc<OwnedFd>>> {
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

    fn lstat(&self, rel: &Path) -> Result<Option<FileStat>> {
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

    fn readlink(&self, rel: &Path) -> Result<Option<OsString>> {
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

    fn open(&self, rel: &Path) -> Result<Option<File>> {
        let (Some(name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            return Ok(None);
        };
        let Some(parent) = self.dir(parent)? else {
            return Ok(None);
        };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        match openat(&*parent, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT | Errno::ELOOP) => Ok(None),
            Err(e) => Err(e).with_context(|| self.context("open", rel)),
        }
    }

    /// The names in the directory at `rel` with their inode numbers; None if it is not one.
    fn list(&self, rel: &Path) -> Result<Option<BTreeMap<OsString, u64>>> {
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
    fn extents(&self, fs: BorrowedFd<'_>, ino: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut range = SearchRange {
            tree_id: self.tree,
            min: (ino, BTRFS_EXTENT_DATA_KEY, 0),
            max: (ino, BTRFS_EXTENT_DATA_KEY, u64::MAX),
            min_transid: 0,
        };
        loop {
            let items = ioctl::tree_search(fs, &range).with_context(|| {
                format!(
                    "cannot read the extents of inode {ino} in {}",
                    quoted(self.name)
                )
            })?;
            let Some(last) = items.last() else { break };
            let next = last.offset;
            out.extend(
                items
                    .into_iter()
                    .filter(|i| i.item_type == BTRFS_EXTENT_DATA_KEY)
                    .map(|i| (i.offset, i.data)),
            );
            if next == u64::MAX {
                break;
            }
            range.min.2 = next + 1;
        }
        Ok(out)
    }
}

/// The comparison in progress.
struct Walk<'a> {
    fs: BorrowedFd<'a>,
    root: Side<'a>,
    blank: Side<'a>,
    patterns: &'a [Pattern],
    /// Paths of the subvolumes nested directly in root (reported on their own, never entered).
    subvolumes: HashSet<PathBuf>,
    /// New directories already walked whole.
    walked: HashSet<PathBuf>,
    /// Paths already compared with the blank.
    compared: HashSet<PathBuf>,
    entries: BTreeMap<PathBuf, Found>,
}

impl Walk<'_> {
    fn excluded(&self, rel: &Path) -> bool {
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

    fn inside_walked(&self, rel: &Path) -> bool {
        rel.ancestors().any(|a| self.walked.contains(a))
    }

    /// A changed directory of root: list it on both sides.
    fn directory(&mut self, dir: &Path) -> Result<()> {
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
    fn add_new(&mut self, rel: &Path) -> Result<()> {
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
    fn compare(&mut self, rel: &Path) -> Result<()> {
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

    fn same_content(
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
                let (a, b) = (
                    self.root.extents(self.fs, mine.st_ino)?,
                    self.blank.extents(self.fs, theirs.st_ino)?,
                );
                // TREE_SEARCH (v1) hands back an item too big for its buffer (an inline extent
                // of a filesystem mounted with max_inline near 4 KiB) without its payload:
                // such a list proves nothing.
                if a == b && a.iter().all(|(_, item)| !item.is_empty()) {
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
fn same_metadata(kind: Kind, a: &FileStat, b: &FileStat) -> bool {
    a.st_mode == b.st_mode
        && a.st_uid == b.st_uid
        && a.st_gid == b.st_gid
        && (kind == Kind::Dir || (a.st_mtime, a.st_mtime_nsec) == (b.st_mtime, b.st_mtime_nsec))
}

fn same_bytes(mut a: File, mut b: File) -> std::io::Result<bool> {
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

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_advance_in_kernel_order() {
        assert_eq!(next_key((5, 1, 7)), Some((5, 1, 8)));
        assert_eq!(next_key((5, 1, u64::MAX)), Some((5, 2, 0)));
        assert_eq!(next_key((5, 255, u64::MAX)), Some((6, 0, 0)));
        assert_eq!(next_key((u64::MAX, 255, u64::MAX)), None);
    }

    #[test]
    fn paths_are_shown_plain_or_escaped() {
        assert_eq!(shown(Path::new("etc/foo")), "/etc/foo");
        assert_eq!(shown(Path::new("")), "/");
        assert_eq!(shown(Path::new("a b")), "\"/a b\"");
        assert_eq!(shown(Path::new("new\nline")), "\"/new\\nline\"");
        assert_eq!(shown(Path::new("ünï")), "/ünï");
        let odd = PathBuf::from(OsStr::from_bytes(b"x\xff"));
        assert_eq!(shown(&odd), "\"/x\\xFF\"");
    }

    #[test]
    fn text_output() {
        let mut entries = BTreeMap::new();
        entries.insert(
            PathBuf::from("etc/new"),
            Found::new(Change::New, Kind::File),
        );
        entries.insert(
            PathBuf::from("etc/a b"),
            Found::new(Change::Gone, Kind::Dir),
        );
        let mut sub = Found::new(Change::Subvolume, Kind::Dir);
        sub.subvolume = Some((260, 3));
        entries.insert(PathBuf::from("var/lib/machines"), sub);
        let mut changed = Found::new(Change::Changed, Kind::Symlink);
        changed.was = Some(Kind::File);
        entries.insert(PathBuf::from("etc/x"), changed);
        entries.insert(
            PathBuf::from("etc/t"),
            Found::new(Change::Metadata, Kind::File),
        );
        let report = Report {
            root_id: 256,
            blank_id: 257,
            since: Some(9),
            entries,
        };
        assert_eq!(
            report.text(),
            "- \"/etc/a b\"\n+ /etc/new\n* /etc/t (metadata only)\n~ /etc/x (was a file)\n\
             @ /var/lib/machines (subvolume, erased whole with 3 nested)\n\
             1 new, 1 changed, 1 metadata only, 1 gone, 1 subvolumes\n"
        );
        let names = Names::new(OsStr::new("root"), OsStr::new("root-blank")).unwrap();
        let json = report.json(&names).to_string_pretty();
        assert!(json.contains("\"path\": \"/etc/x\",\n      \"change\": \"changed\",\n      \"kind\": \"symlink\",\n      \"was\": \"file\""), "{json}");
        assert!(json.contains("\"id\": 260,\n      \"nested\": 3"), "{json}");
        assert!(json.contains("\"since_transid\": 9"), "{json}");
    }
}
