//! The raw-ioctl floor of a rollback, for `scripts/bench.sh`: the same sequence of calls that
//! `btrfs-rollback run` makes, with no tool around it (no checks, no plan, no log, no
//! read-only handling, no error recovery). What `btrfs-rollback run` costs above this is the
//! tool's overhead.
//!
//! mount subvolid=5; SNAP_CREATE_V2 root-blank as the temporary name; renameat2
//! RENAME_EXCHANGE with root; BTRFS_IOC_SYNC; walk the old root's nested subvolumes (the
//! tool's own walk, `subvolume::walk`: one TREE_SEARCH_V2 per level of the tree, or per group
//! of neighbouring ids in it); SNAP_DESTROY_V2 by id, children first; BTRFS_IOC_SYNC; umount.
//!
//! Usage: `floor DEVICE MOUNTPOINT` (the mountpoint must exist). Needs root. Prints the time
//! of each phase on stderr.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use btrfs_rollback::ioctl::{renameat2, Rename};
use btrfs_rollback::{ioctl, subvolume};
use nix::fcntl::AT_FDCWD;
use nix::mount::{mount, umount, MsFlags};

const ROOT: &str = "root";
const BLANK: &str = "root-blank";
const TEMP: &str = "root.btrfs-rollback-tmp";

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [device, mountpoint] = &args[..] else {
        bail!("usage: floor DEVICE MOUNTPOINT");
    };
    let mut phases: Vec<(&str, f64)> = Vec::new();
    let mut t = Instant::now();
    let mut lap = |name: &'static str, phases: &mut Vec<(&str, f64)>| {
        phases.push((name, t.elapsed().as_secs_f64() * 1e3));
        t = Instant::now();
    };

    mount(
        Some(device.as_path()),
        mountpoint.as_path(),
        Some("btrfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("subvolid=5"),
    )
    .context("mount")?;
    lap("mount", &mut phases);
    let deleted;
    {
        let top = subvolume::open_dir(AT_FDCWD, mountpoint.as_path())?;
        let fs = top.as_fd();
        let blank = subvolume::open_dir(fs, BLANK)?;
        ioctl::snap_create(fs, OsStr::new(TEMP), blank.as_fd(), false)?;
        renameat2(fs, TEMP.as_ref(), fs, ROOT.as_ref(), Rename::Exchange).context("renameat2")?;
        ioctl::sync(fs)?;
        lap("snapshot+exchange+sync", &mut phases);

        let old = subvolume::id_of(subvolume::open_dir(fs, TEMP)?.as_fd())?;
        // Every subvolume comes after all of its descendants, the old root last.
        let mut order: Vec<u64> = subvolume::walk(fs, old, TEMP.as_ref())?
            .into_iter()
            .map(|(n, _)| n.id)
            .collect();
        order.push(old);
        lap("walk", &mut phases);
        for id in &order {
            ioctl::snap_destroy_by_id(fs, *id)?;
        }
        lap("destroy", &mut phases);
        ioctl::sync(fs)?;
        lap("sync", &mut phases);
        deleted = order.len();
    }
    umount(mountpoint.as_path()).context("umount")?;
    lap("umount", &mut phases);

    let phases: Vec<String> = phases
        .iter()
        .map(|(name, ms)| format!("{name} {ms:.1} ms"))
        .collect();
    eprintln!(
        "floor: deleted {deleted} subvolume(s); {}",
        phases.join(", ")
    );
    Ok(())
}
