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
//!    is a snapshot of the other, or a file of the blank changed after that transaction
//!    (its `ctransid`; a snapshot of the blank raises only its generation) (a
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
//! With `--exclude`, a line per pattern follows: `3 paths excluded by --exclude "*.log"`.
//!
//! `diff NAME` compares the old root `old_roots/NAME` with the blank instead of `root`: what
//! that root held that a fresh one does not (what a rollback without `--keep-old-roots` would
//! have erased). Same output.
//!
//! JSON output (`--json`): the `diff` document of `docs/json.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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

use crate::inspect::read_slot;
use crate::ioctl::{self, SubvolInfo};
use crate::json::Json;
use crate::names::{self, quoted, Names};
use crate::plan::{Slot, OLD_ROOTS};
use crate::render::{self, count};
use crate::session::{Session, Target};
use crate::subvolume::{self, Entry, Nested};

/// The inode number of a subvolume's root directory.
const ROOT_DIR_INO: u64 = BTRFS_FIRST_FREE_OBJECTID as u64;

/// How directories are opened: never through a symlink.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// `btrfs-rollback diff [NAME]`: `root` (or the old root `old_roots/NAME`) against the blank,
/// in `session` (mounted read-only).
pub fn diff(
    session: &Session,
    target: &Target,
    name: Option<&OsStr>,
    exclude: &[String],
    json: bool,
) -> Result<()> {
    let patterns = exclude
        .iter()
        .map(|p| Pattern::new(p))
        .collect::<Result<Vec<_>>>()?;
    if let Some(name) = name {
        names::check_component("NAME", name)?;
    }
    let (fs, described) = (session.fd(), session.described());
    let names = &target.names;
    let subject = match name {
        Some(name) => old_root(fs, name)?,
        None => PathBuf::from(&names.root),
    };
    let start = Instant::now();
    let report = compare(fs, names, &subject, &patterns).with_context(|| {
        format!(
            "cannot compare {} with {} on {described}",
            quoted(&subject),
            quoted(&names.blank)
        )
    })?;
    log::debug!(
        "compared {} with {} in {:.2} s",
        quoted(&subject),
        quoted(&names.blank),
        start.elapsed().as_secs_f64()
    );
    let out = if json {
        report
            .json(&target.device, described, names, name)
            .to_string_pretty()
    } else {
        report.text()
    };
    print!("{out}");
    Ok(())
}

/// `old_roots/NAME`, checked to be a subvolume in the directory of old roots.
fn old_root(fs: BorrowedFd<'_>, name: &OsStr) -> Result<PathBuf> {
    let path = Path::new(OLD_ROOTS).join(name);
    let dir = subvolume::entry(fs, OsStr::new(OLD_ROOTS))?;
    if matches!(dir, Entry::Missing) {
        bail!(
            "{} is not an old root: there is no {OLD_ROOTS:?} directory in the top-level volume \
             (old roots are kept there by `run --keep-old-roots` or `--keep-days`)",
            quoted(&path)
        );
    }
    if let Entry::Other(what) = dir {
        if what != "a plain directory, not a subvolume" {
            bail!(
                "{} is not an old root: {OLD_ROOTS:?} in the top-level volume is {what}",
                quoted(&path)
            );
        }
    }
    match subvolume::entry(fs, path.as_os_str())? {
        Entry::Subvolume { .. } => Ok(path),
        Entry::Missing => bail!(
            "{} is not an old root: it does not exist (`btrfs-rollback list` shows the old roots)",
            quoted(&path)
        ),
        Entry::Other(what) => bail!("{} is not an old root: it is {what}", quoted(&path)),
    }
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
    /// For `Subvolume`: its id and the subvolumes nested in it, children before parents.
    subvolume: Option<(u64, Vec<Nested>)>,
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
    /// `root` and the blank, as `list` shows them.
    root: Slot,
    blank: Slot,
    /// What was compared with the blank (`root` or `old_roots/NAME`) and its id.
    compared: (PathBuf, u64),
    since: Option<u64>,
    entries: BTreeMap<PathBuf, Found>,
    /// Each `--exclude` pattern and how many entries it left out.
    excluded: Vec<(String, usize)>,
}

impl Report {
    fn count(&self, change: Change) -> usize {
        self.entries.values().filter(|f| f.change == change).count()
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (path, found) in &self.entries {
            let _ = write!(out, "{} {}", found.change.symbol(), shown(path));
            match (found.change, found.was, &found.subvolume) {
                (Change::Changed, Some(was), _) => {
                    let _ = write!(out, " (was {})", was.article());
                }
                (Change::Metadata, _, _) => out.push_str(" (metadata only)"),
                (Change::Subvolume, _, Some((_, n))) if n.is_empty() => {
                    out.push_str(" (subvolume, erased whole)")
                }
                (Change::Subvolume, _, Some((_, n))) => {
                    let _ = write!(out, " (subvolume, erased whole with {} nested)", n.len());
                }
                _ => {}
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{} new, {} changed, {} metadata only, {} gone, {}",
            self.count(Change::New),
            self.count(Change::Changed),
            self.count(Change::Metadata),
            self.count(Change::Gone),
            count(self.count(Change::Subvolume), "subvolume"),
        );
        for (pattern, n) in &self.excluded {
            let _ = writeln!(
                out,
                "{} excluded by --exclude {}",
                count(*n, "path"),
                quoted(pattern)
            );
        }
        out
    }

    /// The `diff` document of docs/json.md.
    fn json(&self, device: &Path, described: &str, names: &Names, old: Option<&OsStr>) -> Json {
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
                if let Some((id, nested)) = &found.subvolume {
                    fields.push(("id", Json::id(*id)));
                    fields.push(("nested", render::nested_list_json(nested)));
                }
                Json::Object(fields)
            })
            .collect();
        let count = |c| Json::Int(self.count(c) as i64);
        let excluded = self
            .excluded
            .iter()
            .map(|(pattern, n)| {
                Json::Object(vec![
                    ("pattern", Json::str(pattern)),
                    ("paths", Json::Int(*n as i64)),
                ])
            })
            .collect();
        render::document(
            "diff",
            device,
            described,
            render::slot_json(&names.root, &self.root),
            render::slot_json(&names.blank, &self.blank),
            vec![
                ("old_root", old.map_or(Json::Null, Json::os)),
                (
                    "compared",
                    Json::Object(vec![
                        ("path", Json::path(&self.compared.0)),
                        ("id", Json::id(self.compared.1)),
                    ]),
                ),
                ("since_transid", self.since.map_or(Json::Null, Json::id)),
                ("entries", Json::Array(entries)),
                ("excluded", Json::Array(excluded)),
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
            ],
        )
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

/// Take out the entries `patterns` exclude (the path or a directory above it matches); how
/// many each pattern took, in the order given (an entry counts for the first that matches).
fn exclude(entries: &mut BTreeMap<PathBuf, Found>, patterns: &[Pattern]) -> Vec<(String, usize)> {
    let mut counts = vec![0; patterns.len()];
    entries.retain(|rel, _| {
        let abs = absolute(rel);
        let bytes = abs.as_bytes();
        let hit = patterns.iter().position(|p| {
            (1..=bytes.len())
                .filter(|&end| end == bytes.len() || bytes[end] == b'/')
                .any(|end| p.matches(&bytes[..end]))
        });
        if let Some(i) = hit {
            counts[i] += 1;
        }
        hit.is_none()
    });
    patterns
        .iter()
        .map(|p| p.text().to_string())
        .zip(counts)
        .collect()
}

/// Compare `subject` (`root`, or an old root), a path in the top level, with the blank.
///
/// `--exclude` is applied to the result, so that what it left out can be counted.
fn compare(
    fs: BorrowedFd<'_>,
    names: &Names,
    subject: &Path,
    patterns: &[Pattern],
) -> Result<Report> {
    let (root_fd, root_info) = subvolume_info(fs, subject.as_os_str(), "root")?;
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
    // The blank's ctransid is the last transaction that changed an inode in it: at most what
    // it shares with root, or later if it was changed since (a writable blank), which root's
    // tree cannot show. Not its generation: every snapshot of the blank (each run) raises
    // that without changing a file, so every old root but the newest would look stale.
    let since = match shared {
        Some(t) if blank_info.ctransid <= t => Some(t),
        Some(_) => {
            log::warn!(
                "{} was changed after {} was made from it: comparing every file, which takes \
                 longer",
                quoted(&names.blank),
                quoted(subject)
            );
            None
        }
        None => {
            log::warn!(
                "{} and {} are not snapshots of one another: comparing every file, which takes \
                 longer",
                quoted(subject),
                quoted(&names.blank)
            );
            None
        }
    };
    log::debug!(
        "{} (ID {}, created in transaction {}), {} (ID {}, created in {}, a file last changed \
         in {})",
        quoted(subject),
        root_info.id,
        root_info.otransid,
        quoted(&names.blank),
        blank_info.id,
        blank_info.otransid,
        blank_info.ctransid
    );
    let root = Side::new(root_fd, root_info.id, subject.as_os_str())?;
    let blank = Side::new(blank_fd, blank_info.id, &names.blank)?;
    let mut walk = Walk {
        fs,
        root,
        blank,
        patterns: &[],
        subvolumes: HashSet::new(),
        walked: HashSet::new(),
        compared: HashSet::new(),
        entries: BTreeMap::new(),
    };

    // Nested subvolumes: the direct children of root, each with what is nested in it.
    let root_name = subject;
    let nested = subvolume::nested_post_order(fs, root_info.id, root_name)?;
    for n in nested.iter().filter(|n| n.parent == root_info.id) {
        let rel = n
            .path
            .strip_prefix(root_name)
            .unwrap_or(&n.path)
            .to_path_buf();
        walk.subvolumes.insert(rel.clone());
        let inside = nested
            .iter()
            .filter(|m| m.id != n.id && m.path.starts_with(&n.path))
            .cloned()
            .collect();
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
        quoted(subject),
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
    let mut entries = walk.entries;
    let excluded = exclude(&mut entries, patterns);
    let root = if subject == Path::new(&names.root) {
        read_slot(fs, Path::new(&names.root), Some(nested))?
    } else {
        read_slot(fs, Path::new(&names.root), None)?
    };
    Ok(Report {
        root,
        blank: read_slot(fs, Path::new(&names.blank), None)?,
        compared: (subject.to_path_buf(), root_info.id),
        since,
        entries,
        excluded,
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
        let nested = |id| Nested {
            id,
            parent: 260,
            path: PathBuf::from(format!("root/var/lib/machines/{id}")),
            readonly: false,
        };
        sub.subvolume = Some((260, vec![nested(261), nested(262), nested(263)]));
        entries.insert(PathBuf::from("var/lib/machines"), sub);
        let mut changed = Found::new(Change::Changed, Kind::Symlink);
        changed.was = Some(Kind::File);
        entries.insert(PathBuf::from("etc/x"), changed);
        entries.insert(
            PathBuf::from("etc/t"),
            Found::new(Change::Metadata, Kind::File),
        );
        let sub = |id| Slot {
            entry: Entry::Subvolume {
                id,
                readonly: false,
            },
            ..Slot::missing()
        };
        let report = Report {
            root: sub(256),
            blank: sub(257),
            compared: (PathBuf::from("root"), 256),
            since: Some(9),
            entries,
            excluded: vec![("*.log".into(), 1), ("/tmp".into(), 2)],
        };
        assert_eq!(
            report.text(),
            "- \"/etc/a b\"\n+ /etc/new\n* /etc/t (metadata only)\n~ /etc/x (was a file)\n\
             @ /var/lib/machines (subvolume, erased whole with 3 nested)\n\
             1 new, 1 changed, 1 metadata only, 1 gone, 1 subvolume\n\
             1 path excluded by --exclude \"*.log\"\n\
             2 paths excluded by --exclude \"/tmp\"\n"
        );
        let names = Names::new(OsStr::new("root"), OsStr::new("root-blank")).unwrap();
        let json = report
            .json(Path::new("/dev/x"), "x", &names, None)
            .to_string_pretty();
        assert!(json.contains("\"path\": \"/etc/x\",\n      \"change\": \"changed\",\n      \"kind\": \"symlink\",\n      \"was\": \"file\""), "{json}");
        assert!(
            json.contains("\"id\": 260,\n      \"nested\": [\n"),
            "{json}"
        );
        assert!(json.contains("\"paths\": 2"), "{json}");
        assert!(json.contains("\"since_transid\": 9"), "{json}");
    }
}
