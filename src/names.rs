//! Every name the tool gives or reads on the disk (the temporary name, set-aside leftovers,
//! `old_roots/` and its entries, the retired mark, the restore marker), the subvolume names
//! given on the command line, and how names are shown in messages.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;

use anyhow::{bail, Result};

use crate::clock::utc;

/// The longest name a btrfs directory entry can have.
const NAME_MAX: usize = 255;

/// The suffix of the temporary name used during a rollback (`<root>.btrfs-rollback-tmp`). It
/// holds the fresh snapshot before the swap and the old root after it; a leftover one is always
/// safe to delete (see `rollback.rs`).
const TEMP_SUFFIX: &str = ".btrfs-rollback-tmp";

/// The longest name a run derives from `--root`: `<root>.btrfs-rollback-tmp.<id>`, a leftover
/// set aside under its subvolume id, which has at most 20 digits (`u64::MAX`).
const ASIDE_EXTRA: usize = TEMP_SUFFIX.len() + 1 + 20;

/// The longest `--root` whose derived names all fit in a btrfs name.
pub const ROOT_MAX: usize = NAME_MAX - ASIDE_EXTRA;

/// The directory of kept old roots, in the top-level volume.
pub const OLD_ROOTS: &str = "old_roots";

/// The extended attribute btrfs-rollback writes on the top directory of every root it moves
/// into `old_roots/`: the time it retired it, in seconds since the epoch. Only subvolumes with
/// this mark and a name in this tool's format are pruned; `trusted.` attributes can only be set
/// (and read) with CAP_SYS_ADMIN, so no unprivileged user can make a subvolume look like one.
pub const RETIRED_XATTR: &str = "trusted.btrfs-rollback.retired";

/// Whether `name` is in the format `old_root_name` gives (`2026-11-27_10-04-05`, `.2`, ...).
pub fn is_old_root_name(name: &std::ffi::OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let (base, n) = match name.split_once('.') {
        Some((base, n)) => (base, Some(n)),
        None => (name, None),
    };
    let shape = base.len() == 19
        && base.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'_',
            13 | 16 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    let suffix_ok = |n: &str| {
        !n.starts_with('0')
            && n.bytes().all(|b| b.is_ascii_digit())
            && n.parse::<u32>().is_ok_and(|n| n >= 2)
    };
    shape && n.map_or(true, suffix_ok)
}

/// The name a leftover with id `id` is set aside under: `<temp>.<id>`.
pub fn aside_name(names: &Names, id: u64) -> OsString {
    let mut name = names.temp.clone();
    name.push(format!(".{id}"));
    name
}

/// The id in a set-aside name `<temp>.<id>` (the inverse of `aside_name`); `None` for any
/// other name, including ids with leading zeros or signs, which this tool never writes.
pub fn aside_id(names: &Names, name: &std::ffi::OsStr) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let rest = name.as_bytes().strip_prefix(names.temp.as_bytes())?;
    let digits = std::str::from_utf8(rest.strip_prefix(b".")?).ok()?;
    let id: u64 = digits.parse().ok()?;
    (aside_name(names, id) == name).then_some(id)
}

/// The name of a kept old root created at `created`: its UTC creation time,
/// `2026-11-27_10-04-05`, with `.2`, `.3`, ... if that is `taken`.
pub fn old_root_name(created: i64, taken: &[OsString]) -> OsString {
    let (y, mo, d, h, mi, s) = utc(created.max(0) as u64);
    let base = format!("{y:04}-{mo:02}-{d:02}_{h:02}-{mi:02}-{s:02}");
    let mut name = OsString::from(&base);
    let mut n = 1;
    while taken.contains(&name) {
        n += 1;
        name = OsString::from(format!("{base}.{n}"));
    }
    name
}

/// The file `btrfs-rollback restore` leaves in the top-level volume: the id of the root it
/// put in place, which the next `run` keeps once.
pub const RESTORE_MARKER: &str = "btrfs-rollback.restored";

/// The name the restore marker is written under before it is renamed into place.
pub const MARKER_TEMP: &str = "btrfs-rollback.restored.tmp";

/// The names a rollback works with, all in the top-level volume, all checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub root: OsString,
    pub blank: OsString,
    pub temp: OsString,
}

impl Names {
    pub fn new(root: &OsStr, blank: &OsStr) -> Result<Self> {
        check_component("--root", root)?;
        check_component("--blank", blank)?;
        for (option, name) in [("--root", root), ("--blank", blank)] {
            if [OLD_ROOTS, RESTORE_MARKER, MARKER_TEMP]
                .iter()
                .any(|n| name == *n)
            {
                bail!(
                    "{option} {} is a name this tool keeps for itself in the top-level volume \
                     (old roots, the restore marker); rename the subvolume",
                    quoted(name)
                );
            }
        }
        if root == blank {
            bail!(
                "--root and --blank are both {}: the blank snapshot must be another subvolume",
                quoted(root)
            );
        }
        if root.len() > ROOT_MAX {
            bail!(
                "--root {} is {} bytes long, too long: {ROOT_MAX} bytes at most, so that the \
                 names derived from it (\"<root>{TEMP_SUFFIX}.<subvolume id>\", up to \
                 {ASIDE_EXTRA} bytes more) fit in btrfs's {NAME_MAX}-byte names",
                quoted(root),
                root.len()
            );
        }
        let mut temp = root.to_os_string();
        temp.push(TEMP_SUFFIX);
        let mut aside_prefix = temp.clone();
        aside_prefix.push(".");
        if blank == temp || blank.as_bytes().starts_with(aside_prefix.as_bytes()) {
            bail!(
                "--blank {} is (or looks like) a temporary name this tool uses for --root {}, \
                 which runs delete as leftovers; rename the blank",
                quoted(blank),
                quoted(root)
            );
        }
        Ok(Names {
            root: root.to_os_string(),
            blank: blank.to_os_string(),
            temp,
        })
    }
}

/// A name must be one path component of the top-level volume: not empty, not `.` or `..`, no
/// `/`, at most 255 bytes. Anything else (spaces, newlines, unicode, a leading dash) is fine.
pub fn check_component(option: &str, name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() {
        bail!("{option} is empty: give the name of a subvolume in the top-level volume");
    }
    if b == b"." || b == b".." {
        bail!(
            "{option} {} is not a subvolume name: give a name in the top-level volume",
            quoted(name)
        );
    }
    if b.contains(&b'/') {
        bail!(
            "{option} {} contains '/': give a single name in the top-level volume, not a path",
            quoted(name)
        );
    }
    if b.contains(&0) {
        bail!("{option} {} contains a NUL byte", quoted(name));
    }
    if b.len() > NAME_MAX {
        bail!(
            "{option} {} is {} bytes long: btrfs names are {NAME_MAX} bytes at most",
            quoted(name),
            b.len()
        );
    }
    Ok(())
}

/// "1 subvolume", "2 subvolumes": a count and its noun, singular or plural as it should be.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A name or path shown in double quotes with control characters escaped, so that names with
/// spaces, newlines or a leading dash read unambiguously on one log line.
pub fn quoted<S: AsRef<OsStr> + ?Sized>(s: &S) -> Quoted<'_> {
    Quoted(s.as_ref())
}

pub struct Quoted<'a>(&'a OsStr);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0.to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(root: &str, blank: &str) -> Result<Names> {
        Names::new(OsStr::new(root), OsStr::new(blank))
    }

    #[test]
    fn a_blank_named_like_a_leftover_is_refused() {
        for blank in ["root.btrfs-rollback-tmp", "root.btrfs-rollback-tmp.300"] {
            let err = names("root", blank).unwrap_err().to_string();
            assert!(err.contains("temporary name"), "{err}");
        }
        assert!(names("root", "root.btrfs-rollback-tmpx").is_ok());
    }

    #[test]
    fn the_tools_own_names_are_refused_as_root_or_blank() {
        // `forget` deletes what is in old_roots/: a root or blank by that name would be
        // deleted from under the running system.
        for own in [OLD_ROOTS, RESTORE_MARKER, MARKER_TEMP] {
            let err = names(own, "root-blank").unwrap_err().to_string();
            assert!(err.contains("--root") && err.contains(own), "{err}");
            let err = names("root", own).unwrap_err().to_string();
            assert!(err.contains("--blank") && err.contains(own), "{err}");
        }
    }

    #[test]
    fn accepts_odd_but_valid_names() {
        for n in [
            "root",
            "my root",
            "new\nline",
            "rôot-ünïcode",
            "-root",
            "root.old",
        ] {
            assert!(names(n, "root-blank").is_ok(), "{n:?} should be accepted");
        }
    }

    #[test]
    fn refuses_paths_and_specials() {
        for n in ["", ".", "..", "a/b", "/root", "root/"] {
            let err = names(n, "root-blank").unwrap_err().to_string();
            assert!(err.contains("--root"), "{n:?}: {err}");
        }
        let err = names("root", "x/y").unwrap_err().to_string();
        assert!(err.contains("--blank") && err.contains("x/y"), "{err}");
    }

    #[test]
    fn refuses_overlong_names() {
        let long = "r".repeat(256);
        assert!(names(&long, "b").is_err());
        // Fits alone, but not with the temporary suffix.
        let almost = "r".repeat(250);
        let err = names(&almost, "b").unwrap_err().to_string();
        assert!(err.contains("too long"), "{err}");
        // Fits with the temporary suffix, but not with `.<id>` after it (issue 9, item 10).
        let err = names(&"r".repeat(236), "b").unwrap_err().to_string();
        assert!(err.contains("215 bytes at most"), "{err}");
        assert!(names(&"r".repeat(ROOT_MAX), "b").is_ok());
        assert!(names(&"r".repeat(ROOT_MAX + 1), "b").is_err());
        // The longest aside name fits exactly.
        let root = "r".repeat(ROOT_MAX);
        let aside = format!("{root}{TEMP_SUFFIX}.{}", u64::MAX);
        assert_eq!(aside.len(), NAME_MAX);
    }

    #[test]
    fn refuses_same_or_colliding_names() {
        assert!(names("root", "root").is_err());
        assert!(names("root", "root.btrfs-rollback-tmp").is_err());
        assert_eq!(
            names("root", "root-blank").unwrap().temp,
            OsString::from("root.btrfs-rollback-tmp")
        );
    }

    #[test]
    fn counts_read_right() {
        assert_eq!(count(0, "subvolume"), "0 subvolumes");
        assert_eq!(count(1, "nested subvolume"), "1 nested subvolume");
        assert_eq!(count(406, "subvolume"), "406 subvolumes");
    }

    #[test]
    fn quoting_escapes_control_characters() {
        assert_eq!(quoted("a b").to_string(), "\"a b\"");
        assert_eq!(quoted("new\nline").to_string(), "\"new\\nline\"");
        assert_eq!(quoted("-x").to_string(), "\"-x\"");
    }
}
