//! The btrfs ioctls this tool uses: one safe function per ioctl, each error naming its ioctl,
//! and the one system call the libraries do not wrap on every target (`renameat2`).
//!
//! This is the only module allowed to use `unsafe`. Structs and request numbers come from
//! `linux-raw-sys` (generated from the kernel's `include/uapi/linux/btrfs.h`), never by hand.
//! Item payloads returned by TREE_SEARCH are handed out as plain bytes and parsed in safe code
//! (`subvolume.rs`).
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use linux_raw_sys::btrfs::{
    btrfs_ioctl_get_subvol_info_args, btrfs_ioctl_ino_lookup_args, btrfs_ioctl_search_args,
    btrfs_ioctl_search_header, btrfs_ioctl_search_key, btrfs_ioctl_vol_args,
    btrfs_ioctl_vol_args_v2, BTRFS_SUBVOL_RDONLY, BTRFS_SUBVOL_SPEC_BY_ID,
};
use linux_raw_sys::ioctl::{
    BTRFS_IOC_DEFAULT_SUBVOL, BTRFS_IOC_GET_SUBVOL_INFO, BTRFS_IOC_INO_LOOKUP, BTRFS_IOC_SCAN_DEV,
    BTRFS_IOC_SNAP_CREATE_V2, BTRFS_IOC_SNAP_DESTROY_V2, BTRFS_IOC_SUBVOL_GETFLAGS,
    BTRFS_IOC_SUBVOL_SETFLAGS, BTRFS_IOC_SYNC, BTRFS_IOC_TREE_SEARCH,
};
pub use nix::errno::Errno;

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

/// One item returned by TREE_SEARCH: its key and its raw payload.
#[derive(Debug, Clone)]
pub struct SearchItem {
    pub objectid: u64,
    pub item_type: u32,
    pub offset: u64,
    pub data: Vec<u8>,
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

/// BTRFS_IOC_TREE_SEARCH, one call: returns up to one buffer (3992 bytes) of items from `range.min`
/// on. Empty means the range is exhausted. `_IOWR(BTRFS_IOCTL_MAGIC, 17, struct btrfs_ioctl_search_args)`.
pub fn tree_search(fd: BorrowedFd<'_>, range: &SearchRange) -> Result<Vec<SearchItem>> {
    // SAFETY: all-zero is a valid btrfs_ioctl_search_args.
    let mut args: btrfs_ioctl_search_args = unsafe { std::mem::zeroed() };
    args.key = btrfs_ioctl_search_key {
        tree_id: range.tree_id,
        min_objectid: range.min.0,
        min_type: range.min.1,
        min_offset: range.min.2,
        max_objectid: range.max.0,
        max_type: range.max.1,
        max_offset: range.max.2,
        min_transid: range.min_transid,
        max_transid: u64::MAX,
        nr_items: 4096,
        unused: 0,
        unused1: 0,
        unused2: 0,
        unused3: 0,
        unused4: 0,
    };
    // SAFETY: TREE_SEARCH takes a pointer to btrfs_ioctl_search_args.
    unsafe {
        ioctl_ptr(
            fd,
            BTRFS_IOC_TREE_SEARCH,
            "BTRFS_IOC_TREE_SEARCH",
            &mut args,
        )
    }?;
    let buf: Vec<u8> = args.buf.iter().map(|&c| c as u8).collect();
    let header_len = std::mem::size_of::<btrfs_ioctl_search_header>();
    let mut items = Vec::with_capacity(args.key.nr_items as usize);
    let mut pos = 0usize;
    for _ in 0..args.key.nr_items {
        let Some(header) = buf.get(pos..pos + header_len) else {
            break;
        };
        // btrfs_ioctl_search_header, in host byte order:
        // transid u64, objectid u64, offset u64, type u32, len u32.
        let objectid = u64::from_ne_bytes(header[8..16].try_into().unwrap());
        let offset = u64::from_ne_bytes(header[16..24].try_into().unwrap());
        let item_type = u32::from_ne_bytes(header[24..28].try_into().unwrap());
        let len = u32::from_ne_bytes(header[28..32].try_into().unwrap()) as usize;
        pos += header_len;
        let Some(data) = buf.get(pos..pos + len) else {
            break;
        };
        items.push(SearchItem {
            objectid,
            item_type,
            offset,
            data: data.to_vec(),
        });
        pos += len;
    }
    Ok(items)
}

const _: () = assert!(std::mem::size_of::<btrfs_ioctl_search_header>() == 32);

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
