//! The one step that puts another subvolume in `root`'s place, for `run` (a fresh snapshot)
//! and `restore` (a kept old root): `renameat2(RENAME_EXCHANGE)` with `root` (or
//! `RENAME_NOREPLACE` when there is no `root`), the new default subvolume if the default
//! follows `root`, and `BTRFS_IOC_SYNC`, so that the rename and the default land in one
//! transaction: a power cut leaves either the old `root` or the new one, never none.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;

use anyhow::{Context, Error};

use crate::ioctl::{self, Errno, Rename};
use crate::names::quoted;

/// Why an exchange did not go through.
#[derive(Debug)]
pub enum Failed {
    /// The rename failed: nothing was changed.
    NotDone(Errno),
    /// The rename returned, so in this boot `root` is the new subvolume, but making it the
    /// default or committing failed: on the disk `root` is the old or the new one.
    Uncommitted(Error),
}

/// Put subvolume `new`, at `name` in `dir`, in the place of `root` in the top-level volume
/// `fs`: exchanged with it if `replace` (the old root then sits at `name`), else moved there
/// (there is no `root`). With `make_default`, `new` becomes the default subvolume in the same
/// transaction. Committed when this returns `Ok`.
pub fn exchange(
    fs: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    root: &OsStr,
    new: u64,
    replace: bool,
    make_default: bool,
) -> Result<(), Failed> {
    let how = if replace {
        Rename::Exchange
    } else {
        Rename::NoReplace
    };
    ioctl::renameat2(dir, name, fs, root, how).map_err(Failed::NotDone)?;
    if make_default {
        ioctl::set_default_subvol(fs, new)
            .with_context(|| {
                format!(
                    "cannot make the new {} (ID {new}) the default subvolume",
                    quoted(root)
                )
            })
            .map_err(Failed::Uncommitted)?;
    }
    ioctl::sync(fs)
        .context("cannot commit the exchange (BTRFS_IOC_SYNC)")
        .map_err(Failed::Uncommitted)
}
