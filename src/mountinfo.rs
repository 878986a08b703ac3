//! `/proc/*/mountinfo`: which mounts there are, of which filesystem, showing which directory.
//!
//! Used to refuse rolling back a `root` that is in use (issue 9, item 9): a running system has
//! `root` (or a subvolume nested in it) mounted, and a rollback would delete it under it.
//! `forget` also reads the mounts of every other mount namespace ([`read_all`]): an old root
//! mounted only in a container, a service with `PrivateMounts=` or an `unshare -m` shell is
//! as much in use, and `/proc/self/mountinfo` does not show it.
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
//! backslash in (4) and (5) are written as octal escapes (`\040`). (11), the super options,
//! name the subvolume a btrfs mount shows (`subvolid=260`; all but very old kernels say it):
//! the subvolume of the directory in (4), whatever path led there.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::ErrorKind;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
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
    /// The subvolume a btrfs mount shows (`subvolid=` in the super options), if said.
    pub subvolid: Option<u64>,
}

/// Parse one line; `None` if it is not a well-formed mountinfo line. Bytes, not text: only
/// space, tab, newline and backslash are escaped, and paths need not be UTF-8.
pub fn parse_line(line: &[u8]) -> Option<Mount> {
    fn text(field: &[u8]) -> Option<&str> {
        std::str::from_utf8(field).ok()
    }
    let mut fields = line.split(|&b| b == b' ');
    let id = text(fields.next()?)?.parse().ok()?;
    let _parent = fields.next()?;
    let (major, minor) = text(fields.next()?)?.split_once(':')?;
    let dev = (major.parse().ok()?, minor.parse().ok()?);
    let root = PathBuf::from(unescape(fields.next()?));
    let mount_point = PathBuf::from(unescape(fields.next()?));
    let _options = fields.next()?;
    // Optional fields, up to the separator.
    fields.by_ref().find(|f| *f == b"-")?;
    let fstype = String::from_utf8_lossy(fields.next()?).into_owned();
    let _source = fields.next();
    let subvolid = fields
        .next()
        .and_then(|f| subvolid(&String::from_utf8_lossy(f)));
    Some(Mount {
        id,
        dev,
        root,
        mount_point,
        fstype,
        subvolid,
    })
}

/// `subvolid=N` in a mount's super options (`rw,relatime,subvolid=256,subvol=/root`).
pub fn subvolid(super_options: &str) -> Option<u64> {
    super_options
        .split(',')
        .find_map(|o| o.strip_prefix("subvolid="))
        .and_then(|id| id.parse().ok())
}

/// Undo mountinfo's octal escapes (`\040` is a space). Bytes, not text: names need not be
/// UTF-8.
pub fn unescape(b: &[u8]) -> OsString {
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

/// Parse the whole file; malformed lines are skipped.
pub fn parse(text: &[u8]) -> Vec<Mount> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

/// The mounts of this process's mount namespace.
pub fn read() -> Result<Vec<Mount>> {
    read_in(Path::new("/proc/self/mountinfo"))
}

/// The mounts of one mount namespace, read through a process in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's inode number (`/proc/PID/ns/mnt`), the same for every process in it.
    pub inode: u64,
    /// The process it was read through; `None` for this process's own namespace.
    pub pid: Option<u32>,
    pub mounts: Vec<Mount>,
}

/// The mounts of every mount namespace that a process is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllNamespaces {
    /// This process's own first, then the others in the order of their lowest PID.
    pub namespaces: Vec<Namespace>,
    /// Namespaces (or processes whose namespace could not be told) that could not be read
    /// for another reason than the process having exited: access denied, most likely.
    pub unreadable: usize,
}

/// The mounts of every mount namespace on this system (one `/proc`).
pub fn read_all() -> Result<AllNamespaces> {
    read_all_in(Path::new("/proc"))
}

/// [`read_all`] from the proc filesystem at `proc`. Each namespace is read once, through
/// the first process found in it (another one of it if that one cannot be read). Our own
/// namespace's mounts must be readable; a process that exits meanwhile is skipped, and one
/// that denies access is counted in `unreadable`. If our own namespace cannot be told apart
/// (no `/proc/self/ns/mnt`: a kernel without namespaces, say), only it is read, with a
/// warning: as before namespaces were looked at, never less.
pub fn read_all_in(proc: &Path) -> Result<AllNamespaces> {
    let own = proc.join("self");
    let mounts = read_in(&own.join("mountinfo"))?;
    let inode = match ns_inode(&own) {
        Ok(Some(inode)) => Some(inode),
        Ok(None) => None,
        Err(e) => {
            log::debug!("{e:#}");
            None
        }
    };
    let mut all = AllNamespaces {
        namespaces: vec![Namespace {
            inode: inode.unwrap_or(0),
            pid: None,
            mounts,
        }],
        unreadable: 0,
    };
    let Some(inode) = inode else {
        log::warn!(
            "cannot read {}: only this command's own mount namespace is checked for mounts",
            own.join("ns/mnt").display()
        );
        return Ok(all);
    };
    let mut read = HashSet::from([inode]);
    let mut failed = HashSet::new();
    for pid in pids(proc)? {
        let dir = proc.join(pid.to_string());
        let inode = match ns_inode(&dir) {
            Ok(Some(inode)) => inode,
            Ok(None) => continue,
            Err(_) => {
                all.unreadable += 1;
                continue;
            }
        };
        if read.contains(&inode) {
            continue;
        }
        match std::fs::read(dir.join("mountinfo")) {
            Ok(text) => {
                read.insert(inode);
                all.namespaces.push(Namespace {
                    inode,
                    pid: Some(pid),
                    mounts: parse(&text),
                });
            }
            Err(e) if gone(&e) => {}
            Err(_) => {
                failed.insert(inode);
            }
        }
    }
    all.unreadable += failed.difference(&read).count();
    Ok(all)
}

/// The inode number of the mount namespace of the process whose proc directory is `dir`;
/// `None` if the process is gone (or a zombie, which has no namespace left).
fn ns_inode(dir: &Path) -> Result<Option<u64>> {
    match std::fs::metadata(dir.join("ns/mnt")) {
        Ok(meta) => Ok(Some(meta.ino())),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}/ns/mnt", dir.display())),
    }
}

/// Whether an error reading a process's proc files means it exited meanwhile.
fn gone(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// The processes in `proc`, in ascending order.
fn pids(proc: &Path) -> Result<Vec<u32>> {
    let entries =
        std::fs::read_dir(proc).with_context(|| format!("cannot list {}", proc.display()))?;
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

fn read_in(path: &Path) -> Result<Vec<Mount>> {
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read {} (is /proc mounted?)", path.display()))?;
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

/// The mounts of filesystem `dev` that show subvolume `ids` (by `subvolid=`), or the
/// top-level directory `name` or anything inside it ([`mounts_inside`]): a tree of subvolumes
/// is in use if any subvolume of it is mounted, by whatever path, or any directory in it.
pub fn mounts_of<'m>(
    mounts: &'m [Mount],
    dev: (u32, u32),
    name: &OsStr,
    ids: &[u64],
) -> Vec<&'m Mount> {
    let inside = mounts_inside(mounts, dev, name);
    mounts
        .iter()
        .filter(|m| m.dev == dev && m.fstype == "btrfs")
        .filter(|m| {
            m.subvolid.is_some_and(|id| ids.contains(&id))
                || inside.iter().any(|i| std::ptr::eq(*i, *m))
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
        let m = parse(SAMPLE.as_bytes());
        assert_eq!(m.len(), 10, "{m:?}");
        let live = &m[2];
        assert_eq!(live.id, 73);
        assert_eq!(live.dev, (0, 41));
        assert_eq!(live.root, Path::new("/root"));
        assert_eq!(live.mount_point, Path::new("/"));
        assert_eq!(live.fstype, "btrfs");
        assert_eq!(live.subvolid, Some(256));
        assert_eq!(m[4].subvolid, Some(260), "subvolid without subvol");
        assert_eq!(m[6].subvolid, None, "no subvolid (very old kernels)");
        assert_eq!(m[0].subvolid, None, "not btrfs");
        assert!(parse_line(b"").is_none());
        assert!(parse_line(b"1 2 0:3 / /x rw no-separator").is_none());
    }

    /// Mount points need not be UTF-8 (only space, tab, newline and backslash are escaped):
    /// such a line is read, and so is the rest of the file.
    #[test]
    fn reads_mount_points_that_are_not_utf8() {
        let mut text = b"1 0 0:41 / /run/top rw - btrfs /dev/dm-0 rw,subvolid=5\n".to_vec();
        text.extend_from_slice(b"2 1 0:41 /root /m\xff\xfe rw - btrfs /dev/dm-0 rw,subvolid=256\n");
        let m = parse(&text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point.as_os_str().as_bytes(), b"/m\xff\xfe");
        assert_eq!(m[1].subvolid, Some(256));
        assert_eq!(mounts_inside(&m, (0, 41), OsStr::new("root")).len(), 1);
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(b"/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape(b"/mnt/x"), "/mnt/x");
        assert_eq!(unescape(b"/a\\134b"), "/a\\b");
        assert_eq!(unescape(b"/new\\012line\\011tab"), "/new\nline\ttab");
        // Not an escape: kept as written.
        assert_eq!(unescape(b"/a\\09b\\"), "/a\\09b\\");
        assert_eq!(unescape(b"/\\303\\251"), OsStr::from_bytes("/é".as_bytes()));
    }

    #[test]
    fn finds_mounts_of_root_and_inside_it_on_the_same_filesystem_only() {
        let m = parse(SAMPLE.as_bytes());
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

    #[test]
    fn reads_subvolid_among_the_super_options() {
        assert_eq!(subvolid("rw,subvolid=5,subvol=/"), Some(5));
        assert_eq!(subvolid("subvolid=260"), Some(260));
        assert_eq!(subvolid("rw,subvol=/subvolid=7"), None);
        assert_eq!(subvolid("rw,subvolid=x"), None);
        assert_eq!(subvolid(""), None);
    }

    #[test]
    fn finds_mounts_of_a_tree_by_subvolume_id_or_path() {
        let m = parse(
            "\
1 0 0:41 / /run/top rw - btrfs /dev/dm-0 rw,subvolid=5,subvol=/
2 1 0:41 /old_roots/a /a rw - btrfs /dev/dm-0 rw,subvolid=300,subvol=/old_roots/a
3 1 0:41 /old_roots/a/srv/x /x rw - btrfs /dev/dm-0 rw,subvolid=302
4 1 0:41 /old_roots/a/etc /etc-bind rw - btrfs /dev/dm-0 rw,subvolid=300
5 1 0:41 /old_roots/ab /ab rw - btrfs /dev/dm-0 rw,subvolid=310
6 1 0:50 /old_roots/a /other-fs rw - btrfs /dev/sdb rw,subvolid=300
7 1 0:41 /old_roots/a/var /no-subvolid rw - btrfs /dev/dm-0 rw
8 1 0:41 /moved/elsewhere /by-id rw - btrfs /dev/dm-0 rw,subvolid=301
9 1 0:41 /old_roots/a /tmpfs rw - tmpfs tmpfs rw,subvolid=300
"
            .as_bytes(),
        );
        let ids: Vec<u64> = mounts_of(&m, (0, 41), OsStr::new("old_roots/a"), &[300, 301, 302])
            .iter()
            .map(|m| m.id)
            .collect();
        // Not "old_roots/ab", not the same ids on another filesystem, not a tmpfs.
        assert_eq!(ids, vec![2, 3, 4, 7, 8]);
        assert!(mounts_of(&m, (0, 41), OsStr::new("old_roots/b"), &[320]).is_empty());
    }

    /// A directory standing in for /proc, removed on drop.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(test: &str) -> FakeProc {
            let dir =
                std::env::temp_dir().join(format!("btrfs-rollback-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("namespaces")).unwrap();
            FakeProc(dir)
        }

        /// A process `pid` (or "self") in namespace `ns`, with `mountinfo` if given.
        fn process(&self, pid: &str, ns: Option<&str>, mountinfo: Option<&str>) {
            let dir = self.0.join(pid);
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            if let Some(ns) = ns {
                let target = self.0.join("namespaces").join(ns);
                if !target.exists() {
                    std::fs::write(&target, "").unwrap();
                }
                std::os::unix::fs::symlink(target, dir.join("ns/mnt")).unwrap();
            }
            if let Some(text) = mountinfo {
                std::fs::write(dir.join("mountinfo"), text).unwrap();
            }
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_each_mount_namespace_once_and_skips_what_it_cannot_read() {
        let line = |id: u32, at: &str| format!("{id} 1 0:41 / {at} rw - btrfs /dev/dm-0 rw\n");
        let proc = FakeProc::new("read-all");
        proc.process("self", Some("own"), Some(&line(1, "/own")));
        // Our own namespace, seen again through our PID: not read twice.
        proc.process("10", Some("own"), Some(&line(2, "/own-again")));
        proc.process("30", Some("container"), Some(&line(3, "/in-container")));
        proc.process("31", Some("container"), Some(&line(4, "/read-twice")));
        // Exited: no ns link, no mountinfo.
        proc.process("40", None, None);
        // Its first process exited between the two reads; the next one in it is read.
        proc.process("50", Some("service"), None);
        proc.process("51", Some("service"), Some(&line(5, "/in-service")));
        // Cannot be read (a directory stands for a denied one): counted, not fatal.
        proc.process("60", Some("denied"), None);
        std::fs::create_dir(proc.0.join("60/mountinfo")).unwrap();
        // Not a process.
        std::fs::create_dir_all(proc.0.join("sys")).unwrap();
        let all = read_all_in(&proc.0).unwrap();
        let seen: Vec<(Option<u32>, Vec<u64>)> = all
            .namespaces
            .iter()
            .map(|n| (n.pid, n.mounts.iter().map(|m| m.id).collect()))
            .collect();
        assert_eq!(
            seen,
            vec![(None, vec![1]), (Some(30), vec![3]), (Some(51), vec![5])]
        );
        assert_eq!(all.unreadable, 1);
        let inodes: HashSet<u64> = all.namespaces.iter().map(|n| n.inode).collect();
        assert_eq!(inodes.len(), 3);
    }

    #[test]
    fn our_own_namespace_must_be_readable() {
        let proc = FakeProc::new("read-all-own");
        proc.process("self", Some("own"), None);
        let e = read_all_in(&proc.0).unwrap_err();
        assert!(format!("{e:#}").contains("self/mountinfo"), "{e:#}");
        // Mounts but no namespace link (no namespaces in the kernel): our own mounts only.
        let proc = FakeProc::new("read-all-no-ns");
        proc.process(
            "self",
            None,
            Some("1 1 0:41 / /own rw - btrfs /dev/dm-0 rw\n"),
        );
        proc.process(
            "7",
            Some("other"),
            Some("2 1 0:41 / /other rw - btrfs /dev/dm-0 rw\n"),
        );
        let all = read_all_in(&proc.0).unwrap();
        assert_eq!(all.namespaces.len(), 1);
        assert_eq!(all.namespaces[0].mounts.len(), 1);
    }
}
