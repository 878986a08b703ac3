//! `/proc/self/mountinfo`: which mounts there are, of which filesystem, showing which directory.
//!
//! Used to refuse rolling back a `root` that is in use (issue 9, item 9): a running system has
//! `root` (or a subvolume nested in it) mounted, and a rollback would delete it under it.
//! A line is (proc(5)):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! (1)(2) (3)  (4)   (5)      (6)       (7)   (8) (9)    (10)        (11)
//! ```
//!
//! (3) is the filesystem's device number: for btrfs the same for every mount of one filesystem,
//! whichever subvolume it shows (unlike `st_dev`, which btrfs gives each subvolume its own of).
//! (4) is the directory of the filesystem the mount shows, for btrfs relative to the top-level
//! volume (`/root`, `/root/var/lib/machines`); it follows renames. Space, tab, newline and
//! backslash in (4) and (5) are written as octal escapes (`\040`).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One mount, from one line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    /// The filesystem's device number (major, minor).
    pub dev: (u32, u32),
    /// The directory of the filesystem this mount shows (for btrfs: below the top level).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parse one line; `None` if it is not a well-formed mountinfo line.
pub fn parse_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let _parent = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let _options = fields.next()?;
    // Optional fields, up to the separator.
    fields.by_ref().find(|f| *f == "-")?;
    let fstype = fields.next()?.to_string();
    Some(Mount {
        id,
        dev,
        root,
        mount_point,
        fstype,
    })
}

/// Undo mountinfo's octal escapes (`\040` is a space). Bytes, not text: names need not be
/// UTF-8.
pub fn unescape(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = |c: u8| (b'0'..=b'7').contains(&c);
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|&c| octal(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Parse the whole text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// The mounts of this process's mount namespace.
pub fn read() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo (is /proc mounted?)")?;
    Ok(parse(&text))
}

/// The device number of the btrfs filesystem whose top level is mounted at `top` (the last
/// such mount there, which is the one in effect).
pub fn top_level_dev(mounts: &[Mount], top: &Path) -> Option<(u32, u32)> {
    mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == top && m.fstype == "btrfs" && m.root == Path::new("/"))
        .map(|m| m.dev)
}

/// The mounts of filesystem `dev` that show the top-level directory `name` or anything inside
/// it (a subvolume nested in it, a bind mount of a directory in it).
pub fn mounts_inside<'m>(mounts: &'m [Mount], dev: (u32, u32), name: &OsStr) -> Vec<&'m Mount> {
    let mut own = b"/".to_vec();
    own.extend_from_slice(name.as_bytes());
    mounts
        .iter()
        .filter(|m| m.dev == dev && m.fstype == "btrfs")
        .filter(|m| {
            let root = m.root.as_os_str().as_bytes();
            root == own.as_slice() || (root.starts_with(&own) && root.get(own.len()) == Some(&b'/'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
72 27 0:41 / /run/top rw,relatime - btrfs /dev/mapper/cryptroot rw,subvolid=5,subvol=/
73 1 0:41 /root / rw,relatime shared:1 master:2 - btrfs /dev/mapper/cryptroot rw,subvolid=256,subvol=/root
74 73 0:41 /persist /persist rw - btrfs /dev/mapper/cryptroot rw,subvolid=258,subvol=/persist
75 73 0:41 /root/var/lib/machines /var/lib/machines rw - btrfs /dev/dm-0 rw,subvolid=260
76 73 0:41 /root-blank /blank ro - btrfs /dev/dm-0 ro,subvolid=257
77 73 0:41 /root.btrfs-rollback-tmp /x rw - btrfs /dev/dm-0 rw
78 73 0:50 /root /other rw - btrfs /dev/sdb rw,subvolid=256,subvol=/root
79 73 0:41 /my\\040root/a\\134b /mnt/with\\040space rw - btrfs /dev/dm-0 rw
80 73 0:41 /root /tmpfs-lookalike rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn parses_fields_and_optional_fields() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 10, "{m:?}");
        let live = &m[2];
        assert_eq!(live.id, 73);
        assert_eq!(live.dev, (0, 41));
        assert_eq!(live.root, Path::new("/root"));
        assert_eq!(live.mount_point, Path::new("/"));
        assert_eq!(live.fstype, "btrfs");
        assert!(parse_line("").is_none());
        assert!(parse_line("1 2 0:3 / /x rw no-separator").is_none());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/mnt/x"), "/mnt/x");
        assert_eq!(unescape("/a\\134b"), "/a\\b");
        assert_eq!(unescape("/new\\012line\\011tab"), "/new\nline\ttab");
        // Not an escape: kept as written.
        assert_eq!(unescape("/a\\09b\\"), "/a\\09b\\");
        assert_eq!(unescape("/\\303\\251"), OsStr::from_bytes("/é".as_bytes()));
    }

    #[test]
    fn finds_mounts_of_root_and_inside_it_on_the_same_filesystem_only() {
        let m = parse(SAMPLE);
        let dev = top_level_dev(&m, Path::new("/run/top")).unwrap();
        assert_eq!(dev, (0, 41));
        let ids = |name: &str| -> Vec<u64> {
            mounts_inside(&m, dev, OsStr::new(name))
                .iter()
                .map(|m| m.id)
                .collect()
        };
        // Not root-blank, not the temporary name, not another filesystem, not a tmpfs.
        assert_eq!(ids("root"), vec![73, 75]);
        assert_eq!(ids("my root"), vec![79]);
        assert_eq!(ids("persist"), vec![74]);
        assert!(ids("nix").is_empty());
        assert!(top_level_dev(&m, Path::new("/nowhere")).is_none());
    }
}
