//! Mounting the top-level volume (subvolid=5) for the duration of one command.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::subvolume::{self, TOP_LEVEL};

/// The top-level volume, mounted at `mountpoint` until this is dropped.
pub struct TopLevel {
    mountpoint: PathBuf,
    dir: Option<OwnedFd>,
    created: bool,
}

impl TopLevel {
    /// Mount the top-level volume of `device` at `mountpoint` (created if missing), explicitly
    /// with `subvolid=5`, so a default subvolume set to anything else does not matter.
    pub fn mount(device: &Path, mountpoint: &Path, readonly: bool) -> Result<Self> {
        let created = !mountpoint.exists();
        if created {
            std::fs::create_dir_all(mountpoint).with_context(|| {
                format!("cannot create the mountpoint {}", mountpoint.display())
            })?;
        } else if is_mountpoint(mountpoint)? {
            bail!(
                "something is already mounted at {}; give a free directory with --mountpoint",
                mountpoint.display()
            );
        }
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        if let Err(e) = mount(
            Some(device),
            mountpoint,
            Some("btrfs"),
            flags,
            Some("subvolid=5"),
        ) {
            if created {
                let _ = std::fs::remove_dir(mountpoint);
            }
            return Err(e).with_context(|| {
                format!(
                    "cannot mount the top-level volume of {} at {} (mount -t btrfs -o subvolid=5)",
                    device.display(),
                    mountpoint.display()
                )
            });
        }
        // From here on, Drop unmounts.
        let mut top = TopLevel {
            mountpoint: mountpoint.to_path_buf(),
            dir: None,
            created,
        };
        let dir = subvolume::open_dir(nix::fcntl::AT_FDCWD, mountpoint)
            .with_context(|| format!("cannot open {}", mountpoint.display()))?;
        let id = subvolume::id_of(dir.as_fd())?;
        if id != TOP_LEVEL {
            bail!(
                "mounting {} with subvolid=5 gave subvolume {id}, not the top-level volume",
                device.display()
            );
        }
        top.dir = Some(dir);
        Ok(top)
    }

    /// A descriptor of the top-level volume's root directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_ref().expect("mounted").as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Take an exclusive lock on the top-level directory, so two rollbacks of the same
    /// filesystem (through any mountpoint) never run at once.
    pub fn lock(&self) -> Result<Flock<OwnedFd>> {
        let dup = self.fd().try_clone_to_owned()?;
        Flock::lock(dup, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            anyhow::Error::from(e)
                .context("another btrfs-rollback is working on this filesystem right now")
        })
    }
}

impl Drop for TopLevel {
    fn drop(&mut self) {
        self.dir = None;
        let mp = &self.mountpoint;
        if let Err(e) = umount2(mp, MntFlags::empty()) {
            log::warn!(
                "cannot unmount {} ({e}); detaching it instead",
                mp.display()
            );
            if let Err(e) = umount2(mp, MntFlags::MNT_DETACH) {
                log::error!("cannot detach {}: {e}", mp.display());
                return;
            }
        }
        if self.created {
            let _ = std::fs::remove_dir(mp);
        }
    }
}

/// Whether a filesystem is mounted at `dir`: from /proc/self/mountinfo when it can be read,
/// else by comparing the device of `dir` with that of its parent.
fn is_mountpoint(dir: &Path) -> Result<bool> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let target = canonical.to_string_lossy();
        return Ok(info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|mp| unescape_mountinfo(mp) == target));
    }
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(&canonical)?;
    let parent = std::fs::metadata(canonical.join(".."))?;
    Ok(here.dev() != parent.dev() || here.ino() == parent.ino())
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/mnt/x"), "/mnt/x");
        assert_eq!(unescape_mountinfo("/a\\134b"), "/a\\b");
    }
}
