//! One command's hold on the filesystem: where it is ([`Target`]), the mount of its top-level
//! volume, the lock that keeps two commands from working on it at once, and the log file.
//! Every subcommand runs in one [`Session`] and nothing else mounts.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use log::Level;
use nix::fcntl::Flock;

use crate::device;
use crate::failure::Failure;
use crate::logging::{self, LogFile, LOG_FILE_CAP};
use crate::mount::TopLevel;
use crate::names::Names;

/// Where the filesystem is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub device: PathBuf,
    pub mountpoint: PathBuf,
    pub names: Names,
    pub wait: Duration,
}

/// What a command needs of the filesystem.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// Read-only, without the lock and without a log file (`list`, `diff`, `log`).
    Look,
    /// Read-only with the lock, without a log file: a dry run sees what the command would.
    DryRun,
    /// Read-write with the lock, appending to the log file at this path (relative to the
    /// top-level volume, or absolute).
    Change { log: &'a Path },
}

/// The mounted top-level volume, locked, with the log file attached, until dropped.
pub struct Session {
    // Dropped in this order: the log file is closed, the lock released, then the volume
    // unmounted.
    log: Option<LogFile>,
    log_path: Option<PathBuf>,
    _lock: Option<Flock<OwnedFd>>,
    top: TopLevel,
    described: String,
}

/// Wait for the device, check it, and mount its top-level volume (read-only if asked).
/// Returns the mount and a description of the device for messages.
fn mount(target: &Target, readonly: bool) -> Result<(TopLevel, String)> {
    device::wait_for(&target.device, target.wait)?;
    let described = device::check(&target.device)?;
    let top = TopLevel::mount(&target.device, &target.mountpoint, readonly)?;
    log::debug!(
        "mounted the top-level volume of {} at {}",
        target.device.display(),
        top.path().display()
    );
    Ok((top, described))
}

impl Session {
    /// Mount, lock and attach the log file as `access` says. A log file that cannot be
    /// written is a warning, never a failure.
    pub fn open(target: &Target, access: Access<'_>) -> Result<Session, Failure> {
        let readonly = !matches!(access, Access::Change { .. });
        let (top, described) = mount(target, readonly)?;
        let lock = match access {
            Access::Look => None,
            Access::DryRun | Access::Change { .. } => Some(
                top.lock()
                    .with_context(|| format!("{} is busy", target.device.display()))?,
            ),
        };
        let mut session = Session {
            log: None,
            log_path: None,
            _lock: lock,
            top,
            described,
        };
        if let Access::Change { log } = access {
            session.log_path = Some(log.to_path_buf());
            session.attach_log(true);
        }
        Ok(session)
    }

    fn attach_log(&mut self, warn: bool) {
        let Some(path) = &self.log_path else {
            return;
        };
        match logging::attach_file(self.top.fd(), path, LOG_FILE_CAP) {
            Ok(log) => self.log = Some(log),
            Err(e) if warn => log::warn!(
                "cannot write the log file {} on the top-level volume ({e}); going on without it",
                path.display()
            ),
            Err(_) => {}
        }
    }

    pub fn top(&self) -> &TopLevel {
        &self.top
    }

    /// The top-level volume's root directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.top.fd()
    }

    /// The device, described for messages.
    pub fn described(&self) -> &str {
        &self.described
    }

    /// End the session after the command: a log file that a full filesystem refused at the
    /// start gets the whole command now (it may have made room), and a failure goes into the
    /// log file too (`cli.rs` prints it on the console).
    pub fn close<T>(mut self, result: &Result<T, Failure>) {
        if self.log.is_none() {
            self.attach_log(false);
        }
        if let Err(failure) = result {
            logging::to_file(Level::Error, &failure.to_string());
        }
    }
}
