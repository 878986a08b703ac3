//! Opening the tool's own files on the top-level volume (the log, its rotated copy, the restore
//! marker): never through a symbolic link, never outside the volume, never blocking.
//!
//! Anyone who can write to the top-level volume (or a subvolume in it) can leave a symbolic
//! link, a FIFO or a directory where the tool expects its file (issue 9, items 6 and 7): a FIFO
//! blocks `open` forever, a boot that never ends; a link makes the tool write into `persist`.
//! So every path is resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV)` relative to the top-level descriptor (a component-by-component walk with
//! `O_NOFOLLOW` on kernels before 5.6, which have no `openat2`), always with `O_NONBLOCK`, and
//! the caller checks with `fstat` what it got before reading or writing.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

/// What an opened descriptor turned out to be, for the message when it is not what was wanted.
pub fn kind(fd: BorrowedFd<'_>) -> Result<&'static str, Errno> {
    let st = fstat(fd)?;
    Ok(kind_of_mode(st.st_mode))
}

/// A file type in words, from `st_mode`.
pub fn kind_of_mode(mode: libc::mode_t) -> &'static str {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "of an unknown type",
    }
}

/// Whether `path` is relative and has no `..` (nor `.`-only or empty): the only paths this
/// module opens. `--log` is checked with this on the command line.
pub fn is_plain_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)))
}

/// Open `path` below the directory `dir` with `flags` (plus `O_NONBLOCK | O_NOFOLLOW |
/// O_CLOEXEC`) and `mode`: refused with ELOOP if any component is a symbolic link, with EXDEV
/// if it would leave `dir` (`..`, an absolute path, another mount).
pub fn open(dir: BorrowedFd<'_>, path: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
    if !is_plain_relative(path) && path != Path::new(".") {
        return Err(Errno::EXDEV);
    }
    // Not O_NOFOLLOW: RESOLVE_NO_SYMLINKS already refuses a link at the last component, with
    // ELOOP, where O_NOFOLLOW with O_DIRECTORY would say ENOTDIR.
    let mut flags = flags | OFlag::O_CLOEXEC;
    // openat2 refuses O_NONBLOCK with O_PATH (EINVAL); an O_PATH open never blocks anyway.
    if !flags.contains(OFlag::O_PATH) {
        flags |= OFlag::O_NONBLOCK;
    }
    let how = OpenHow::new()
        .flags(flags)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    match openat2(dir, path, how) {
        Err(Errno::ENOSYS) => walk(dir, path, flags | OFlag::O_NOFOLLOW, mode),
        other => other,
    }
}

/// `open` for kernels without `openat2`: every directory on the way opened with
/// `O_NOFOLLOW | O_DIRECTORY`, so no symbolic link is followed (only plain relative paths get
/// here, so nothing leads out of `dir` either).
fn walk(dir: BorrowedFd<'_>, path: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, Errno> {
    let parts: Vec<&OsStr> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, dirs)) = parts.split_last() else {
        return openat(dir, ".", flags, Mode::from_bits_truncate(mode));
    };
    let mut here: Option<OwnedFd> = None;
    for d in dirs {
        let at = here.as_ref().map_or(dir, |fd| fd.as_fd());
        let next = openat(
            at,
            *d,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| link_is_eloop(at, d, e))?;
        here = Some(next);
    }
    let at = here.as_ref().map_or(dir, |fd| fd.as_fd());
    openat(at, *last, flags, Mode::from_bits_truncate(mode)).map_err(|e| link_is_eloop(at, last, e))
}

/// With O_DIRECTORY, the kernel checks for a directory before O_NOFOLLOW: a link says ENOTDIR.
/// Say ELOOP, as openat2 does.
fn link_is_eloop(at: BorrowedFd<'_>, name: &OsStr, e: Errno) -> Errno {
    let st = nix::sys::stat::fstatat(at, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW);
    match st {
        Ok(st) if e == Errno::ENOTDIR && kind_of_mode(st.st_mode) == "a symbolic link" => {
            Errno::ELOOP
        }
        _ => e,
    }
}

/// Open the directory that holds `path` (below `dir`, as `open` does) for `*at` calls on the
/// last component, which is returned with it.
pub fn open_parent<'p>(dir: BorrowedFd<'_>, path: &'p Path) -> Result<(OwnedFd, &'p OsStr), Errno> {
    if !is_plain_relative(path) {
        return Err(Errno::EXDEV);
    }
    let name = path.file_name().ok_or(Errno::EINVAL)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let fd = open(dir, parent, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)?;
    Ok((fd, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths() {
        for ok in [
            "rollback.log",
            "logs/rollback.log",
            "./a",
            "a/./b",
            "a b/c\nd",
        ] {
            assert!(is_plain_relative(Path::new(ok)), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../escape.log",
            "a/../b",
            "/abs",
            "a/..",
            "./..",
        ] {
            assert!(!is_plain_relative(Path::new(bad)), "{bad:?}");
        }
    }

    #[test]
    fn kinds_in_words() {
        assert_eq!(kind_of_mode(libc::S_IFIFO | 0o644), "a FIFO");
        assert_eq!(kind_of_mode(libc::S_IFDIR | 0o755), "a directory");
        assert_eq!(kind_of_mode(libc::S_IFREG), "a regular file");
    }

    #[test]
    fn opens_beneath_without_links_or_blocking() {
        let base = std::env::temp_dir().join(format!("beneath-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("top/sub")).unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("top/sub/file"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("outside"), base.join("top/link")).unwrap();
        std::os::unix::fs::symlink("sub/file", base.join("top/filelink")).unwrap();
        nix::unistd::mkfifo(&base.join("top/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let top = openat(
            nix::fcntl::AT_FDCWD,
            &base.join("top"),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let fd = top.as_fd();
        let rd = OFlag::O_RDONLY;
        assert!(open(fd, Path::new("sub/file"), rd, 0).is_ok());
        assert_eq!(
            open(fd, Path::new("link/x"), rd, 0).unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(
            open(fd, Path::new("filelink"), rd, 0).unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(
            open(fd, Path::new("../outside"), rd, 0).unwrap_err(),
            Errno::EXDEV
        );
        // A FIFO opens at once (no writer needed) and says what it is.
        let fifo = open(fd, Path::new("fifo"), rd, 0).unwrap();
        assert_eq!(kind(fifo.as_fd()).unwrap(), "a FIFO");
        drop(fifo);
        // Writing to a FIFO without a reader fails at once instead of waiting.
        assert_eq!(
            open(fd, Path::new("fifo"), OFlag::O_WRONLY, 0).unwrap_err(),
            Errno::ENXIO
        );
        // The fallback walk refuses the same links.
        assert_eq!(
            walk(fd, Path::new("link/x"), rd, 0).unwrap_err(),
            Errno::ELOOP
        );
        assert!(walk(fd, Path::new("sub/file"), rd | OFlag::O_NOFOLLOW, 0).is_ok());
        assert_eq!(
            open_parent(fd, Path::new("link/x")).unwrap_err(),
            Errno::ELOOP
        );
        assert_eq!(
            walk(
                fd,
                Path::new("link"),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
                0
            )
            .unwrap_err(),
            Errno::ELOOP
        );
        let (parent, name) = open_parent(fd, Path::new("sub/file")).unwrap();
        assert_eq!(name, "file");
        assert_eq!(kind(parent.as_fd()).unwrap(), "a directory");
        let _ = std::fs::remove_dir_all(&base);
    }
}
