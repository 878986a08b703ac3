//! The block device: waiting for its node, saying what it is, refusing what is not btrfs.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ioctl;

/// Where the btrfs superblock magic `_BHRfS_M` lies: superblock at 64 KiB, magic at +0x40.
const BTRFS_MAGIC_OFFSET: u64 = 0x1_0040;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";

/// Wait up to `wait` for `path` to exist (in stage 1 the node may come late).
pub fn wait_for(path: &Path, wait: Duration) -> Result<()> {
    let start = Instant::now();
    let mut announced = false;
    loop {
        if path.exists() {
            if announced {
                log::info!(
                    "device {} appeared after {:.1} s",
                    path.display(),
                    start.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if start.elapsed() >= wait {
            bail!(
                "device {} did not appear within {} s (is the disk unlocked? --wait sets how long \
                 to wait)",
                path.display(),
                wait.as_secs()
            );
        }
        if !announced {
            log::info!(
                "waiting up to {} s for device {}",
                wait.as_secs(),
                path.display()
            );
            announced = true;
        }
        sleep(Duration::from_millis(100));
    }
}

/// A one-line description of the device for the log, e.g.
/// `/dev/mapper/cryptroot (dm-0 "cryptroot", LUKS2 mapping)`.
pub fn check(path: &Path) -> Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!(
            "{} is not a block device; give the unlocked btrfs device with --device",
            path.display()
        );
    }
    let dev = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 8];
    let btrfs = dev.read_exact_at(&mut magic, BTRFS_MAGIC_OFFSET).is_ok() && &magic == BTRFS_MAGIC;
    if !btrfs {
        let mut head = [0u8; 6];
        let luks = dev.read_exact_at(&mut head, 0).is_ok() && &head == b"LUKS\xba\xbe";
        if luks {
            bail!(
                "{} is a LUKS container, not a btrfs filesystem: give the unlocked mapping \
                 (for example /dev/mapper/cryptroot) with --device",
                path.display()
            );
        }
        bail!(
            "{} holds no btrfs filesystem (no btrfs superblock at 64 KiB)",
            path.display()
        );
    }
    register(path);
    Ok(describe(path, meta.rdev()))
}

/// Tell the kernel about the device, so that a multi-device filesystem whose members were not
/// scanned yet can be mounted. Failure is only logged: for one device it is not needed.
fn register(path: &Path) {
    let result = File::options()
        .read(true)
        .write(true)
        .open("/dev/btrfs-control")
        .context("cannot open /dev/btrfs-control")
        .and_then(|control| {
            ioctl::scan_dev(control.as_fd(), path.as_os_str()).map_err(anyhow::Error::from)
        });
    if let Err(e) = result {
        log::debug!("could not register {} with btrfs: {e:#}", path.display());
    }
}

fn describe(path: &Path, rdev: u64) -> String {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = format!("/sys/dev/block/{major}:{minor}");
    let read = |f: &str| {
        std::fs::read_to_string(format!("{sys}/{f}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let kernel_name = std::fs::read_link(&sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| format!("{major}:{minor}"));
    match (read("dm/name"), read("dm/uuid")) {
        (Some(name), Some(uuid)) => {
            let kind = if uuid.starts_with("CRYPT-LUKS2-") {
                "LUKS2 mapping"
            } else if uuid.starts_with("CRYPT-LUKS1-") {
                "LUKS1 mapping"
            } else if uuid.starts_with("CRYPT-") {
                "dm-crypt mapping"
            } else {
                "device-mapper device"
            };
            format!("{} ({kernel_name} {name:?}, {kind})", path.display())
        }
        _ => format!("{} ({kernel_name})", path.display()),
    }
}
