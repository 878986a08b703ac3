//! Reading what the top-level volume holds into a [`State`] for the planner (`plan.rs`) and
//! for `list`, `forget` and `restore`.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::beneath;
use crate::ioctl;
use crate::mount::TopLevel;
use crate::names::{aside_id, quoted, Names, OLD_ROOTS, RESTORE_MARKER, RETIRED_XATTR};
use crate::plan::{OldRoot, OldRootsDir, Slot, State};
use crate::subvolume::{self, Entry, Nested};

/// Read what the top-level volume holds.
pub fn inspect(top: &TopLevel, names: &Names) -> Result<State> {
    let fs = top.fd();
    let slot = |path: &Path| read_slot(fs, path, None);
    let mut asides = Vec::new();
    let mut prefix = names.temp.clone();
    prefix.push(".");
    for name in subvolume::names_with_prefix(fs, &prefix)? {
        // `<temp>.<id>` is ours only if it is subvolume <id>; anything else is left alone.
        let id = aside_id(names, &name);
        let slot = slot(Path::new(&name))?;
        match (id, &slot.entry) {
            (Some(id), Entry::Subvolume { id: found, .. }) if id == *found => {
                asides.push((name, slot))
            }
            _ => log::debug!(
                "{} is not a leftover of this tool; leaving it",
                quoted(&name)
            ),
        }
    }
    let (old_roots_dir, old_roots) = old_roots(fs)?;
    let restored = read_marker(fs)?;
    Ok(State {
        root: slot(Path::new(&names.root))?,
        blank: slot(Path::new(&names.blank))?,
        temp: slot(Path::new(&names.temp))?,
        asides,
        default_id: subvolume::default_id(fs)?,
        old_roots_dir,
        old_roots,
        restored,
    })
}

/// What `path` in the top level is: with its nested subvolumes (`nested`, when already
/// read; else read here), creation time and whether it changed since.
pub fn read_slot(fs: BorrowedFd<'_>, path: &Path, nested: Option<Vec<Nested>>) -> Result<Slot> {
    let entry = subvolume::entry(fs, path.as_os_str())?;
    let Entry::Subvolume { id, .. } = entry else {
        return Ok(Slot {
            entry,
            ..Slot::missing()
        });
    };
    let fd = subvolume::expect(fs, path, id)?;
    let info = ioctl::get_subvol_info(fd.as_fd())
        .with_context(|| format!("cannot read the subvolume info of {}", quoted(path)))?;
    let nested = match nested {
        Some(nested) => nested,
        None => subvolume::nested_post_order(fs, id, path)?,
    };
    Ok(Slot {
        entry,
        nested,
        created: info.otime,
        modified: info.generation > info.otransid,
    })
}

/// What `old_roots/` is, and the subvolumes in it.
fn old_roots(fs: BorrowedFd<'_>) -> Result<(OldRootsDir, Vec<OldRoot>)> {
    use nix::sys::stat::{fstatat, SFlag};
    let st = match fstatat(fs, OLD_ROOTS, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(ioctl::Errno::ENOENT) => return Ok((OldRootsDir::Missing, Vec::new())),
        Err(e) => return Err(e).context(format!("cannot stat {OLD_ROOTS:?}")),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR {
        return Ok((OldRootsDir::Unusable("not a directory"), Vec::new()));
    }
    let dir = subvolume::open_dir(fs, OLD_ROOTS)?;
    let mut roots = Vec::new();
    for name in subvolume::names_with_prefix(dir.as_fd(), OsStr::new(""))? {
        if name == "." || name == ".." {
            continue;
        }
        roots.extend(old_root(fs, &name)?);
    }
    roots.sort_by_key(|r| r.id);
    Ok((OldRootsDir::Usable, roots))
}

/// The subvolume `old_roots/NAME` as an old root; `None` if it is not a subvolume. Read
/// alone by `forget`, so that another old root it cannot read does not stand in its way.
pub fn old_root(fs: BorrowedFd<'_>, name: &OsStr) -> Result<Option<OldRoot>> {
    let path = Path::new(OLD_ROOTS).join(name);
    let s = read_slot(fs, &path, None)?;
    let Entry::Subvolume { id, .. } = s.entry else {
        return Ok(None);
    };
    let fd = subvolume::expect(fs, &path, id)?;
    let last_change = ioctl::get_subvol_info(fd.as_fd())
        .with_context(|| format!("cannot read the ctransid of {}", quoted(&path)))?
        .ctransid;
    Ok(Some(OldRoot {
        name: name.to_os_string(),
        id,
        created: s.created,
        nested: s.nested,
        retired: retired_mark(fd.as_fd(), &path),
        last_change,
    }))
}

/// The time in an old root's mark (`plan::RETIRED_XATTR`), `None` without a readable one.
fn retired_mark(fd: BorrowedFd<'_>, path: &Path) -> Option<i64> {
    match ioctl::get_xattr(fd, RETIRED_XATTR) {
        Ok(Some(value)) => std::str::from_utf8(&value).ok()?.trim().parse().ok(),
        Ok(None) => None,
        Err(e) => {
            log::warn!(
                "cannot read the mark of {} ({e}); it is treated as not kept by this tool",
                quoted(path)
            );
            None
        }
    }
}

/// Read the restore marker: the id of the root `restore` put in place, `None` if there is no
/// marker. Opened without following a symbolic link and without blocking. Anything else than
/// a regular file holding an id is stale: a link, FIFO or socket is logged and reads as 0 (no
/// root's id), so the run removes it; a directory is logged and ignored (left alone).
pub fn read_marker(fs: BorrowedFd<'_>) -> Result<Option<u64>> {
    let path = Path::new(RESTORE_MARKER);
    let stale = |what: &str| {
        log::warn!(
            "{RESTORE_MARKER:?} in the top-level volume is {what}, not a marker written by \
             `btrfs-rollback restore`: ignoring it as stale"
        );
    };
    let fd = match beneath::open(fs, path, OFlag::O_RDONLY, 0) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            stale("a symbolic link (not followed)");
            return Ok(Some(0));
        }
        Err(Errno::ENXIO) => {
            stale("a socket");
            return Ok(Some(0));
        }
        // A device node (the top level is mounted nodev: EACCES) or anything else that cannot
        // be opened is not a marker either; refusing would block every boot.
        Err(e) => {
            stale(&format!(
                "something that cannot be opened ({e}; a device node?)"
            ));
            return Ok(Some(0));
        }
    };
    let what = beneath::kind(fd.as_fd()).context(format!("cannot stat {RESTORE_MARKER:?}"))?;
    if what == "a directory" {
        stale("a directory; it is left alone, remove it by hand");
        return Ok(None);
    }
    if what != "a regular file" {
        stale(what);
        return Ok(Some(0));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(64)
        .read_to_end(&mut bytes)
        .context(format!("cannot read {RESTORE_MARKER:?}"))?;
    // Anything unreadable as an id is stale: 0 is never a root's id.
    let text = String::from_utf8_lossy(&bytes);
    Ok(Some(text.trim().parse().unwrap_or(0)))
}
