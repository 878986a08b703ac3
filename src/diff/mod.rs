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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use linux_raw_sys::btrfs::BTRFS_FIRST_FREE_OBJECTID;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, SFlag};

mod pattern;
mod tree;
mod walk;

pub use pattern::Pattern;
use tree::{changed_inodes, Paths};
use walk::{Side, Walk};

use crate::ioctl::{self, SubvolInfo};
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

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;
    use crate::ioctl::next_key;

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
