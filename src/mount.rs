//! Mounting the top-level volume (subvolid=5) for the duration of one command.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::mountinfo::{self, Mount};
use crate::names::quoted;
use crate::subvolume::{self, TOP_LEVEL};

/// The top-level volume, mounted at `mountpoint` until this is dropped.
pub struct TopLevel {
    mountpoint: PathBuf,
    dir: Option<OwnedFd>,
    created: bool,
}

impl TopLevel {
    /// Mount the top-level volume of `device` at `mountpoint` (its last component created if
    /// missing, and removed again on drop), explicitly with `subvolid=5`, so a default
    /// subvolume set to anything else does not matter.
    pub fn mount(device: &Path, mountpoint: &Path, readonly: bool) -> Result<Self> {
        let created = prepare_mountpoint(mountpoint)?;
        if !created && is_mountpoint(mountpoint)? {
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

    /// The mounts, in every mount namespace on this system, that show the top-level directory
    /// `name` or anything inside it, or one of the subvolumes `ids` by id: each with the PID
    /// of a process in its namespace (`None`: this command's own). Mounts of this filesystem
    /// are recognised by the device number of this top-level mount.
    pub fn mounts_of(&self, name: &OsStr, ids: &[u64]) -> Result<Vec<(Option<u32>, Mount)>> {
        let all = mountinfo::read_all()?;
        let here = self
            .mountpoint
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", self.mountpoint.display()))?;
        // Our own namespace comes first and holds our own mount of the top level, which tells
        // this filesystem's device number (the same in every namespace).
        let dev =
            mountinfo::top_level_dev(&all.namespaces[0].mounts, &here).with_context(|| {
                format!(
                    "cannot find the top-level mount at {} in /proc/self/mountinfo",
                    here.display()
                )
            })?;
        if all.unreadable > 0 {
            log::warn!(
                "{} of the mount namespaces on this system could not be read (access denied?): \
                 a mount of {} only there is not seen",
                all.unreadable,
                quoted(name)
            );
        } else {
            log::debug!(
                "read the mounts of {} mount namespaces",
                all.namespaces.len()
            );
        }
        Ok(all
            .namespaces
            .iter()
            .flat_map(|ns| {
                mountinfo::mounts_of(&ns.mounts, dev, name, ids)
                    .into_iter()
                    .map(move |m| (ns.pid, m.clone()))
            })
            .collect())
    }

    /// Where `name` (a subvolume in the top level) or anything inside it is mounted, in any
    /// mount namespace, as "MOUNTPOINT (shows NAME/...)[ in the mount namespace of PID N]"
    /// descriptions; empty if nowhere.
    pub fn mounts_inside(&self, name: &OsStr) -> Result<Vec<String>> {
        Ok(self
            .mounts_of(name, &[])?
            .iter()
            .map(|(pid, m)| {
                let shows = m.root.strip_prefix("/").unwrap_or(&m.root);
                let whose = match pid {
                    None => String::new(),
                    Some(pid) => format!(" in the mount namespace of PID {pid}"),
                };
                format!(
                    "{} (shows {}){whose}",
                    quoted(&m.mount_point),
                    quoted(shows)
                )
            })
            .collect())
    }

    /// Refuse to go on if `root` or anything inside it is mounted on this system (a running
    /// system's `/`): changing it would delete files under a running system. With `force`,
    /// only warn. `doing` says what would be done to it ("roll back", "replace").
    pub fn check_not_in_use(&self, root: &OsStr, force: bool, doing: &str) -> Result<()> {
        let mounted = match self.mounts_inside(root) {
            Ok(mounted) => mounted,
            Err(e) if force => {
                log::warn!(
                    "cannot tell whether {} is mounted on this system ({e:#}); going on because \
                     of --force-mounted",
                    quoted(root)
                );
                return Ok(());
            }
            Err(e) => {
                return Err(e.context(format!(
                    "cannot tell whether {} is mounted on this system; pass --force-mounted to \
                     {doing} without knowing",
                    quoted(root)
                )))
            }
        };
        if mounted.is_empty() {
            return Ok(());
        }
        let list = mounted.join(", ");
        if force {
            log::warn!(
                "{} is in use on this system, mounted at {list}; going on because of \
                 --force-mounted: what is mounted there is replaced or deleted under whatever \
                 uses it",
                quoted(root)
            );
            return Ok(());
        }
        bail!(
            "{} is in use on this system, mounted at {list}; to {doing} it now would delete the \
             files of a running system under it. Run it from stage 1 or a rescue system, or \
             unmount it first (--force-mounted goes on anyway)",
            quoted(root)
        )
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

/// Make sure `mountpoint` is a directory: a missing last component is created (returns true;
/// the caller removes it again), a missing parent is refused rather than created, and so is
/// anything that is not a directory, a symbolic link included (it would be followed).
fn prepare_mountpoint(mountpoint: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => return Ok(false),
        Ok(meta) => bail!(
            "the mountpoint {} is {}, not a directory; give a directory with --mountpoint; \
             nothing was mounted or changed",
            mountpoint.display(),
            if meta.file_type().is_symlink() {
                "a symbolic link"
            } else {
                "a file"
            }
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot look at the mountpoint {}", mountpoint.display()))
        }
    }
    let parent = match mountpoint.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => Path::new("/"),
    };
    if !parent.is_dir() {
        bail!(
            "the mountpoint {} does not exist, and neither does its parent directory {}: only \
             the last component is created; create {} first or give another --mountpoint; \
             nothing was mounted or changed",
            mountpoint.display(),
            parent.display(),
            parent.display()
        );
    }
    std::fs::create_dir(mountpoint)
        .with_context(|| format!("cannot create the mountpoint {}", mountpoint.display()))?;
    Ok(true)
}

/// Whether a filesystem is mounted at `dir`: from /proc/self/mountinfo when it can be read,
/// else by comparing the device of `dir` with that of its parent.
fn is_mountpoint(dir: &Path) -> Result<bool> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    if let Ok(mounts) = mountinfo::read() {
        return Ok(mounts.iter().any(|m| m.mount_point == canonical));
    }
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata(&canonical)?;
    let parent = std::fs::metadata(canonical.join(".."))?;
    Ok(here.dev() != parent.dev() || here.ino() == parent.ino())
}
