//! The btrfs ioctls this tool uses: one safe function per ioctl, each error naming its ioctl,
//! and the one system call the libraries do not wrap on every target (`renameat2`).
//!
//! This is the only module allowed to use `unsafe`. Structs and request numbers come from
//! `linux-raw-sys` (generated from the kernel's `include/uapi/linux/btrfs.h`), never by hand.
//! Item payloads returned by TREE_SEARCH are handed out as plain bytes and decoded in safe code
//! (`items.rs`).
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use linux_raw_sys::btrfs::{
    btrfs_ioctl_get_subvol_info_args, btrfs_ioctl_ino_lookup_args, btrfs_ioctl_qgroup_limit_args,
    btrfs_ioctl_search_args_v2, btrfs_ioctl_search_key, btrfs_ioctl_vol_args,
    btrfs_ioctl_vol_args_v2, btrfs_qgroup_limit, BTRFS_QGROUP_LIMIT_MAX_EXCL,
    BTRFS_QGROUP_LIMIT_MAX_RFER, BTRFS_QGROUP_LIMIT_RSV_EXCL, BTRFS_QGROUP_LIMIT_RSV_RFER,
    BTRFS_SUBVOL_RDONLY, BTRFS_SUBVOL_SPEC_BY_ID, FS_APPEND_FL, FS_IMMUTABLE_FL,
};
use linux_raw_sys::ioctl::{
    BTRFS_IOC_DEFAULT_SUBVOL, BTRFS_IOC_GET_SUBVOL_INFO, BTRFS_IOC_INO_LOOKUP,
    BTRFS_IOC_QGROUP_LIMIT, BTRFS_IOC_SCAN_DEV, BTRFS_IOC_SNAP_CREATE_V2, BTRFS_IOC_SNAP_DESTROY,
    BTRFS_IOC_SNAP_DESTROY_V2, BTRFS_IOC_SUBVOL_GETFLAGS, BTRFS_IOC_SUBVOL_SETFLAGS,
    BTRFS_IOC_SYNC, BTRFS_IOC_TREE_SEARCH_V2, FS_IOC_GETFLAGS, FS_IOC_SETFLAGS,
};
pub use nix::errno::Errno;

use crate::items::SearchHeader;

/// A failed ioctl: which one, and the errno. Callers match on `errno` for the cases that mean
/// something (EROFS, ENOENT, EPERM, ENOTEMPTY); `Display` names the ioctl for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoctlError {
    pub ioctl: &'static str,
    pub errno: Errno,
}

impl fmt::Display for IoctlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.ioctl, self.errno)
    }
}

impl std::error::Error for IoctlError {}

pub type Result<T> = std::result::Result<T, IoctlError>;

/// The subvolume flag for read-only, as SUBVOL_GETFLAGS/SETFLAGS use it.
pub const SUBVOL_RDONLY: u64 = BTRFS_SUBVOL_RDONLY as u64;

/// Issue one ioctl whose argument is a pointer to `arg`.
///
/// # Safety
/// `request` must be an ioctl whose argument is a pointer to a `T` (as the kernel's `_IOW`/
/// `_IOR`/`_IOWR` definition says), and `T` must have the kernel's layout.
unsafe fn ioctl_ptr<T>(
    fd: BorrowedFd<'_>,
    request: u32,
    name: &'static str,
    arg: *mut T,
) -> Result<libc::c_int> {
    // SAFETY: the caller guarantees `request` takes a `*mut T`; `fd` is a live descriptor.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg) };
    if ret < 0 {
        Err(IoctlError {
            ioctl: name,
            errno: Errno::last(),
        })
    } else {
        Ok(ret)
    }
}

/// Copy a name into a kernel `char[N]` buffer, NUL-terminated. Names longer than the buffer
/// are refused with ENAMETOOLONG before any ioctl is issued.
fn copy_name(dst: &mut [libc::c_char], name: &OsStr, ioctl: &'static str) -> Result<()> {
    let bytes = name.as_bytes();
    if bytes.len() >= dst.len() || bytes.contains(&0) {
        return Err(IoctlError {
            ioctl,
            errno: Errno::ENAMETOOLONG,
        });
    }
    for (d, s) in dst.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    dst[bytes.len()] = 0;
    Ok(())
}

/// BTRFS_IOC_SNAP_CREATE_V2: snapshot the subvolume `source` as `name` in directory `dest_dir`.
/// `_IOW(BTRFS_IOCTL_MAGIC, 23, struct btrfs_ioctl_vol_args_v2)`.
/// The kernel commits the transaction that creates the snapshot before it returns.
pub fn snap_create(
    dest_dir: BorrowedFd<'_>,
    name: &OsStr,
    source: BorrowedFd<'_>,
    readonly: bool,
) -> Result<()> {
    const NAME: &str = "BTRFS_IOC_SNAP_CREATE_V2";
    // SAFETY: an all-zero btrfs_ioctl_vol_args_v2 is valid (integers and byte arrays only).
    let mut args: btrfs_ioctl_vol_args_v2 = unsafe { std::mem::zeroed() };
    args.fd = source.as_raw_fd() as i64;
    args.flags = if readonly { SUBVOL_RDONLY } else { 0 };
    // SAFETY: every byte pattern is a valid `c_char` array, so borrowing this union member
    // is sound whatever was written before; SNAP_CREATE_V2 reads `name`.
    copy_name(unsafe { &mut args.__bindgen_anon_2.name }, name, NAME)?;
    // SAFETY: SNAP_CREATE_V2 takes a pointer to btrfs_ioctl_vol_args_v2.
    unsafe { ioctl_ptr(dest_dir, BTRFS_IOC_SNAP_CREATE_V2, NAME, &mut args) }.map(drop)
}

/// BTRFS_IOC_SNAP_DESTROY_V2 with BTRFS_SUBVOL_SPEC_BY_ID: delete subvolume `id` of the
/// filesystem that `fs` is on. `_IOW(BTRFS_IOCTL_MAGIC, 63, struct btrfs_ioctl_vol_args_v2)`.
/// Needs CAP_SYS_ADMIN. The deletion is durable only after the next transaction commit.
pub fn snap_destroy_by_id(fs: BorrowedFd<'_>, id: u64) -> Result<()> {
    // SAFETY: all-zero is a valid btrfs_ioctl_vol_args_v2.
    let mut args: btrfs_ioctl_vol_args_v2 = unsafe { std::mem::zeroed() };
    args.flags = u64::from(BTRFS_SUBVOL_SPEC_BY_ID);
    args.__bindgen_anon_2.subvolid = id;
    // SAFETY: SNAP_DESTROY_V2 takes a pointer to btrfs_ioctl_vol_args_v2.
    unsafe {
        ioctl_ptr(
            fs,
            BTRFS_IOC_SNAP_DESTROY_V2,
            "BTRFS_IOC_SNAP_DESTROY_V2",
            &mut args,
        )
    }
    .map(drop)
}

/// BTRFS_IOC_SNAP_DESTROY (v1): delete the subvolume called `name` in the directory `dir`.
/// `_IOW(BTRFS_IOCTL_MAGIC, 15, struct btrfs_ioctl_vol_args)`. Unlike SNAP_DESTROY_V2 by id,
/// the kernel never builds the subvolume's full path, so this works at any depth.
pub fn snap_destroy_by_name(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    const NAME: &str = "BTRFS_IOC_SNAP_DESTROY";
    // SAFETY: all-zero is a valid btrfs_ioctl_vol_args.
    let mut args: btrfs_ioctl_vol_args = unsafe { std::mem::zeroed() };
    copy_name(&mut args.name, name, NAME)?;
    // SAFETY: SNAP_DESTROY takes a pointer to btrfs_ioctl_vol_args.
    unsafe { ioctl_ptr(dir, BTRFS_IOC_SNAP_DESTROY, NAME, &mut args) }.map(drop)
}

/// The inode flags that make a directory entry impossible to remove (`chattr +i`, `+a`).
pub const FS_UNDELETABLE_FL: u32 = FS_IMMUTABLE_FL | FS_APPEND_FL;

/// FS_IOC_GETFLAGS: the inode flags of `fd` (`lsattr`). Declared `_IOR('f', 1, long)`, but
/// every filesystem reads and writes an `int` (see the comment in `include/uapi/linux/fs.h`).
pub fn getflags(fd: BorrowedFd<'_>) -> Result<u32> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer.
    unsafe { ioctl_ptr(fd, FS_IOC_GETFLAGS, "FS_IOC_GETFLAGS", &mut flags) }?;
    Ok(flags as u32)
}

/// FS_IOC_SETFLAGS: set the inode flags of `fd` (`chattr`). `_IOW('f', 2, long)`, an `int`
/// in fact, as for GETFLAGS.
pub fn setflags(fd: BorrowedFd<'_>, flags: u32) -> Result<()> {
    let mut flags = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int through the pointer.
    unsafe { ioctl_ptr(fd, FS_IOC_SETFLAGS, "FS_IOC_SETFLAGS", &mut flags) }.map(drop)
}

/// BTRFS_IOC_QGROUP_LIMIT: remove every limit of qgroup `qgroupid` (`btrfs qgroup limit none`:
/// each limit set to the kernel's CLEAR_VALUE, `(u64)-1`).
/// `_IOR(BTRFS_IOCTL_MAGIC, 43, struct btrfs_ioctl_qgroup_limit_args)`.
pub fn qgroup_clear_limit(fs: BorrowedFd<'_>, qgroupid: u64) -> Result<()> {
    let mut args = btrfs_ioctl_qgroup_limit_args {
        qgroupid,
        lim: btrfs_qgroup_limit {
            flags: u64::from(
                BTRFS_QGROUP_LIMIT_MAX_RFER
                    | BTRFS_QGROUP_LIMIT_MAX_EXCL
                    | BTRFS_QGROUP_LIMIT_RSV_RFER
                    | BTRFS_QGROUP_LIMIT_RSV_EXCL,
            ),
            max_rfer: u64::MAX,
            max_excl: u64::MAX,
            rsv_rfer: u64::MAX,
            rsv_excl: u64::MAX,
        },
    };
    // SAFETY: QGROUP_LIMIT takes a pointer to btrfs_ioctl_qgroup_limit_args (the kernel only
    // reads it, though the request is declared _IOR).
    unsafe {
        ioctl_ptr(
            fs,
            BTRFS_IOC_QGROUP_LIMIT,
            "BTRFS_IOC_QGROUP_LIMIT",
            &mut args,
        )
    }
    .map(drop)
}

const _: () = assert!(std::mem::size_of::<btrfs_ioctl_qgroup_limit_args>() == 48);
const _: () = assert!(std::mem::size_of::<btrfs_ioctl_vol_args>() == 4096);

/// BTRFS_IOC_SUBVOL_GETFLAGS on an open subvolume. `_IOR(BTRFS_IOCTL_MAGIC, 25, __u64)`.
pub fn subvol_getflags(subvol: BorrowedFd<'_>) -> Result<u64> {
    let mut flags: u64 = 0;
    // SAFETY: SUBVOL_GETFLAGS writes one __u64 through the pointer.
    unsafe {
        ioctl_ptr(
            subvol,
            BTRFS_IOC_SUBVOL_GETFLAGS,
            "BTRFS_IOC_SUBVOL_GETFLAGS",
            &mut flags,
        )
    }?;
    Ok(flags)
}

/// BTRFS_IOC_SUBVOL_SETFLAGS on an open subvolume. `_IOW(BTRFS_IOCTL_MAGIC, 26, __u64)`.
pub fn subvol_setflags(subvol: BorrowedFd<'_>, flags: u64) -> Result<()> {
    let mut flags = flags;
    // SAFETY: SUBVOL_SETFLAGS reads one __u64 through the pointer.
    unsafe {
        ioctl_ptr(
            subvol,
            BTRFS_IOC_SUBVOL_SETFLAGS,
            "BTRFS_IOC_SUBVOL_SETFLAGS",
            &mut flags,
        )
    }
    .map(drop)
}

/// BTRFS_IOC_INO_LOOKUP: the path of directory inode `objectid` inside subvolume `tree_id`,
/// relative to that subvolume (with a trailing `/` unless empty). With `tree_id` 0 the kernel
/// answers for the subvolume `fd` is in, and returns that subvolume's id: this is how a
/// descriptor's subvolume id is read. `_IOWR(BTRFS_IOCTL_MAGIC, 18, struct btrfs_ioctl_ino_lookup_args)`.
pub fn ino_lookup(fd: BorrowedFd<'_>, tree_id: u64, objectid: u64) -> Result<(u64, Vec<u8>)> {
    // SAFETY: all-zero is a valid btrfs_ioctl_ino_lookup_args.
    let mut args: btrfs_ioctl_ino_lookup_args = unsafe { std::mem::zeroed() };
    args.treeid = tree_id;
    args.objectid = objectid;
    // SAFETY: INO_LOOKUP takes a pointer to btrfs_ioctl_ino_lookup_args.
    unsafe { ioctl_ptr(fd, BTRFS_IOC_INO_LOOKUP, "BTRFS_IOC_INO_LOOKUP", &mut args) }?;
    let path: Vec<u8> = args
        .name
        .iter()
        .map(|&c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    Ok((args.treeid, path))
}

/// The key range of a TREE_SEARCH, compared as the kernel compares keys: (objectid, type, offset)
/// in that order, so a range over several objectids also returns other item types between them.
#[derive(Debug, Clone, Copy)]
pub struct SearchRange {
    pub tree_id: u64,
    pub min: (u64, u32, u64),
    pub max: (u64, u32, u64),
    /// Only items in tree blocks written in this transaction or later (what
    /// `btrfs subvolume find-new` uses); 0 for all.
    pub min_transid: u64,
}

impl SearchRange {
    /// Every item of type `item_type` with objectid `objectid` in tree `tree_id`.
    pub fn of(tree_id: u64, objectid: u64, item_type: u32) -> SearchRange {
        SearchRange {
            tree_id,
            min: (objectid, item_type, 0),
            max: (objectid, item_type, u64::MAX),
            min_transid: 0,
        }
    }
}

/// The key right after `key`, in the kernel's order; `None` after the last one.
pub fn next_key((objectid, item_type, offset): (u64, u32, u64)) -> Option<(u64, u32, u64)> {
    if offset < u64::MAX {
        Some((objectid, item_type, offset + 1))
    } else if item_type < u32::from(u8::MAX) {
        Some((objectid, item_type + 1, 0))
    } else if objectid < u64::MAX {
        Some((objectid + 1, 0, 0))
    } else {
        None
    }
}

/// The buffer a search starts with: enough for the few items most searches return. A search
/// that needs a second page doubles it for each further page, up to `SEARCH_BUF`, so a long
/// one takes few calls; an item larger than the buffer makes it grow (EOVERFLOW says how much
/// is needed), up to what the kernel accepts.
const SEARCH_BUF_FIRST: usize = 4 << 10;
const SEARCH_BUF: usize = 64 << 10;
/// The kernel caps `buf_size` at 16 MiB (`btrfs_ioctl_tree_search_v2`).
const SEARCH_BUF_MAX: usize = 16 << 20;
const SEARCH_ARGS: usize = std::mem::size_of::<btrfs_ioctl_search_args_v2>();
const _: () = assert!(SEARCH_ARGS == 112);

/// BTRFS_IOC_TREE_SEARCH_V2 over a key range, page after page: every item in the range, in key
/// order, with its search header and its whole payload (v2 grows its buffer for an item larger
/// than it, where v1 handed such an item back empty).
/// `_IOWR(BTRFS_IOCTL_MAGIC, 17, struct btrfs_ioctl_search_args_v2)`.
///
/// ```ignore
/// let mut search = TreeSearch::new(fs, range);
/// while let Some((header, data)) = search.next()? { ... }
/// ```
pub struct TreeSearch<'fd> {
    fd: BorrowedFd<'fd>,
    range: SearchRange,
    /// At most this many items per call (1 for a lookup of one key).
    per_call: u32,
    /// `struct btrfs_ioctl_search_args_v2` followed by its buffer, in u64s for the alignment.
    mem: Vec<u64>,
    /// Bytes of the current page's buffer already handed out, and its items not yet.
    pos: usize,
    left: u32,
    /// The key of the last item handed out.
    last: Option<(u64, u32, u64)>,
    done: bool,
}

impl<'fd> TreeSearch<'fd> {
    pub fn new(fd: BorrowedFd<'fd>, range: SearchRange) -> TreeSearch<'fd> {
        Self::with(fd, range, u32::MAX, SEARCH_BUF_FIRST)
    }

    fn with(fd: BorrowedFd<'fd>, range: SearchRange, per_call: u32, buf: usize) -> TreeSearch<'fd> {
        TreeSearch {
            fd,
            range,
            per_call,
            mem: vec![0u64; (SEARCH_ARGS + buf).div_ceil(8)],
            pos: 0,
            left: 0,
            last: None,
            done: false,
        }
    }

    /// The first item in `range`, if any: one call, for the lookup of one key.
    pub fn first(
        fd: BorrowedFd<'_>,
        range: SearchRange,
    ) -> Result<Option<(SearchHeader, Vec<u8>)>> {
        let mut search = TreeSearch::with(fd, range, 1, SEARCH_BUF_FIRST);
        Ok(search.next()?.map(|(h, d)| (h, d.to_vec())))
    }

    /// Every item in `range`, copied.
    pub fn all(fd: BorrowedFd<'_>, range: SearchRange) -> Result<Vec<(SearchHeader, Vec<u8>)>> {
        let mut search = TreeSearch::new(fd, range);
        let mut out = Vec::new();
        while let Some((h, d)) = search.next()? {
            out.push((h, d.to_vec()));
        }
        Ok(out)
    }

    /// The next item: its header and its payload (valid until the next call).
    #[allow(clippy::should_implement_trait)] // it lends its buffer: not an `Iterator`
    pub fn next(&mut self) -> Result<Option<(SearchHeader, &[u8])>> {
        if self.left == 0 && (self.done || !self.fill()?) {
            self.done = true;
            return Ok(None);
        }
        let buf = self.buf();
        let bad = IoctlError {
            ioctl: "BTRFS_IOC_TREE_SEARCH_V2 (a malformed result)",
            errno: Errno::EIO,
        };
        let rest = buf.get(self.pos..).ok_or(bad)?;
        let header = SearchHeader::parse(rest).map_err(|_| bad)?;
        let start = self.pos + SearchHeader::SIZE;
        let end = start
            .checked_add(header.len as usize)
            .filter(|&end| end <= buf.len())
            .ok_or(bad)?;
        self.pos = end;
        self.left -= 1;
        self.last = Some(header.key());
        Ok(Some((header, &self.buf()[start..end])))
    }

    /// The result buffer, after the args.
    fn buf(&self) -> &[u8] {
        let bytes = self.mem.len() * 8;
        // SAFETY: `mem` is one allocation of `bytes` initialized bytes (u64s, any pattern is a
        // valid u8), alive as long as `self`; the slice is read-only while borrowed.
        let all = unsafe { std::slice::from_raw_parts(self.mem.as_ptr().cast::<u8>(), bytes) };
        &all[SEARCH_ARGS..]
    }

    /// Fetch the next page from where the last one ended. Returns whether it has items.
    fn fill(&mut self) -> Result<bool> {
        if let Some(last) = self.last {
            if last >= self.range.max {
                return Ok(false);
            }
            match next_key(last) {
                Some(next) => self.range.min = next,
                None => return Ok(false),
            }
            // The last page was full: a larger one saves calls.
            let size = self.mem.len() * 8 - SEARCH_ARGS;
            if size < SEARCH_BUF {
                self.mem = vec![0u64; (SEARCH_ARGS + (size * 2).min(SEARCH_BUF)).div_ceil(8)];
            }
        }
        loop {
            let buf_size = self.mem.len() * 8 - SEARCH_ARGS;
            let r = &self.range;
            let args = btrfs_ioctl_search_args_v2 {
                key: btrfs_ioctl_search_key {
                    tree_id: r.tree_id,
                    min_objectid: r.min.0,
                    min_type: r.min.1,
                    min_offset: r.min.2,
                    max_objectid: r.max.0,
                    max_type: r.max.1,
                    max_offset: r.max.2,
                    min_transid: r.min_transid,
                    max_transid: u64::MAX,
                    nr_items: self.per_call,
                    unused: 0,
                    unused1: 0,
                    unused2: 0,
                    unused3: 0,
                    unused4: 0,
                },
                buf_size: buf_size as u64,
                buf: Default::default(),
            };
            let head = self.mem.as_mut_ptr().cast::<btrfs_ioctl_search_args_v2>();
            // SAFETY: `mem` holds at least SEARCH_ARGS bytes, aligned for u64 (the struct's
            // alignment); TREE_SEARCH_V2 takes a pointer to btrfs_ioctl_search_args_v2
            // followed by `buf_size` bytes, which `mem` holds after the args.
            let result = unsafe {
                head.write(args);
                ioctl_ptr(
                    self.fd,
                    BTRFS_IOC_TREE_SEARCH_V2,
                    "BTRFS_IOC_TREE_SEARCH_V2",
                    head,
                )
            };
            // SAFETY: the kernel wrote back the args (or left ours): a valid value either way.
            let back = unsafe { head.read() };
            match result {
                Ok(_) => {
                    self.pos = 0;
                    self.left = back.key.nr_items;
                    return Ok(self.left > 0);
                }
                // The first item is larger than the buffer; `buf_size` says what it needs.
                Err(e) if e.errno == Errno::EOVERFLOW && buf_size < SEARCH_BUF_MAX => {
                    let need = (back.buf_size as usize)
                        .max(buf_size * 2)
                        .min(SEARCH_BUF_MAX);
                    self.mem = vec![0u64; (SEARCH_ARGS + need).div_ceil(8)];
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// BTRFS_IOC_SYNC: commit the running transaction and wait for it. `_IO(BTRFS_IOCTL_MAGIC, 8)`.
pub fn sync(fs: BorrowedFd<'_>) -> Result<()> {
    // SAFETY: BTRFS_IOC_SYNC takes no argument; a null pointer is what `_IO` expects.
    unsafe { ioctl_ptr::<u8>(fs, BTRFS_IOC_SYNC, "BTRFS_IOC_SYNC", std::ptr::null_mut()) }.map(drop)
}

/// BTRFS_IOC_DEFAULT_SUBVOL: make subvolume `id` the default. `_IOW(BTRFS_IOCTL_MAGIC, 19, __u64)`.
pub fn set_default_subvol(fs: BorrowedFd<'_>, id: u64) -> Result<()> {
    let mut id = id;
    // SAFETY: DEFAULT_SUBVOL reads one __u64 through the pointer.
    unsafe {
        ioctl_ptr(
            fs,
            BTRFS_IOC_DEFAULT_SUBVOL,
            "BTRFS_IOC_DEFAULT_SUBVOL",
            &mut id,
        )
    }
    .map(drop)
}

/// BTRFS_IOC_SCAN_DEV on `/dev/btrfs-control`: register a device so that a filesystem spanning
/// several devices can be mounted. `_IOW(BTRFS_IOCTL_MAGIC, 4, struct btrfs_ioctl_vol_args)`.
pub fn scan_dev(control: BorrowedFd<'_>, device: &OsStr) -> Result<()> {
    const NAME: &str = "BTRFS_IOC_SCAN_DEV";
    // SAFETY: all-zero is a valid btrfs_ioctl_vol_args.
    let mut args: btrfs_ioctl_vol_args = unsafe { std::mem::zeroed() };
    copy_name(&mut args.name, device, NAME)?;
    // SAFETY: SCAN_DEV takes a pointer to btrfs_ioctl_vol_args.
    unsafe { ioctl_ptr(control, BTRFS_IOC_SCAN_DEV, NAME, &mut args) }.map(drop)
}

/// What GET_SUBVOL_INFO says of a subvolume (the fields this tool uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubvolInfo {
    pub id: u64,
    /// The transid of the subvolume's last change, and of its creation.
    pub generation: u64,
    /// The transid of the last change to its namespace (a name created, removed or renamed
    /// in it); reads, atime updates and xattrs do not move it.
    pub ctransid: u64,
    pub otransid: u64,
    /// Creation time, seconds since the epoch (as the clock said then).
    pub otime: i64,
    pub uuid: [u8; 16],
    pub parent_uuid: [u8; 16],
}

/// BTRFS_IOC_GET_SUBVOL_INFO on a descriptor inside the subvolume.
/// `_IOR(BTRFS_IOCTL_MAGIC, 60, struct btrfs_ioctl_get_subvol_info_args)`.
pub fn get_subvol_info(subvol: BorrowedFd<'_>) -> Result<SubvolInfo> {
    // SAFETY: all-zero is a valid btrfs_ioctl_get_subvol_info_args.
    let mut args: btrfs_ioctl_get_subvol_info_args = unsafe { std::mem::zeroed() };
    // SAFETY: GET_SUBVOL_INFO writes a btrfs_ioctl_get_subvol_info_args through the pointer.
    unsafe {
        ioctl_ptr(
            subvol,
            BTRFS_IOC_GET_SUBVOL_INFO,
            "BTRFS_IOC_GET_SUBVOL_INFO",
            &mut args,
        )
    }?;
    Ok(SubvolInfo {
        id: args.treeid,
        generation: args.generation,
        ctransid: args.ctransid,
        otransid: args.otransid,
        otime: args.otime.sec as i64,
        uuid: args.uuid,
        parent_uuid: args.parent_uuid,
    })
}

/// How `renameat2` renames: `Exchange` swaps two existing names atomically (one btrfs
/// transaction), `NoReplace` fails with EEXIST instead of replacing the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    Exchange,
    NoReplace,
}

/// renameat2(2) as a raw system call. glibc and nix wrap it only on glibc targets (nix 0.31
/// gates `nix::fcntl::renameat2` on `target_env = "gnu"`), and musl, which NixOS's static
/// build uses, has no wrapper: the system call is the same everywhere.
pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
    how: Rename,
) -> std::result::Result<(), Errno> {
    let flags = match how {
        Rename::Exchange => libc::RENAME_EXCHANGE,
        Rename::NoReplace => libc::RENAME_NOREPLACE,
    };
    let old = std::ffi::CString::new(old.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let new = std::ffi::CString::new(new.as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath,
    // unsigned int flags); both paths are NUL-terminated and live until the call returns.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// fgetxattr(2): the value of the extended attribute `name` of `fd` (at most 255 bytes: this
/// tool only reads its own short marks), `None` if there is no such attribute.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> std::result::Result<Option<Vec<u8>>, Errno> {
    let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    let mut buf = [0u8; 255];
    // SAFETY: fgetxattr(int fd, const char *name, void *value, size_t size) writes at most
    // `size` bytes into `value`; `name` is NUL-terminated; both outlive the call.
    let ret = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    match ret {
        n if n >= 0 => Ok(Some(buf[..n as usize].to_vec())),
        _ => match Errno::last() {
            Errno::ENODATA => Ok(None),
            e => Err(e),
        },
    }
}

/// fsetxattr(2): set the extended attribute `name` of `fd` to `value`, creating or replacing it.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> std::result::Result<(), Errno> {
    let name = std::ffi::CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)
    // reads `size` bytes from `value`; `name` is NUL-terminated; both outlive the call.
    let ret = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}
