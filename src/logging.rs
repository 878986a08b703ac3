//! Where the rollback's words go: stderr (env_logger), `/dev/kmsg` (so `journalctl -b` and
//! `dmesg` show the rollback after boot), and a log file on the top-level volume.
//!
//! The file can only be opened once the volume is mounted; lines logged before that are kept
//! and written first, so the first lines of a run are never lost. A log that cannot be
//! written never stops a rollback: it is reported on the other sinks and the run goes on.
//! `/dev/kmsg` gets informational lines and above only: the kernel rate-limits userspace
//! writes (10 lines per 5 s by default), so the per-subvolume details go to the file. Under
//! systemd (a unit whose stderr is the journal, as in NixOS's systemd stage 1) stderr is the
//! journal already, and `/dev/kmsg` is left alone: journald reads the kernel log too, and
//! every line would be in `journalctl -b` twice.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};
use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::beneath;
use crate::clock::{now, utc};

/// The log file is moved to `<name>.old` when it grows past this at the start of a run.
pub const LOG_FILE_CAP: u64 = 1024 * 1024;
/// Lines kept while no log file is attached.
const PENDING_MAX: usize = 1000;
/// The kernel truncates longer records; keep one record readable.
const KMSG_MAX: usize = 900;

struct Sinks {
    kmsg: Option<File>,
    file: Option<File>,
    pending: Vec<String>,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    kmsg: None,
    file: None,
    pending: Vec::new(),
});

struct Logger {
    stderr: env_logger::Logger,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Debug || self.stderr.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.stderr.matches(record) {
            self.stderr.log(record);
        } else if record.level() == Level::Error {
            // RUST_LOG=off or the like never hides an error.
            eprintln!(
                "{}btrfs-rollback: error: {}",
                prefix(Level::Error),
                record.args()
            );
        }
        if record.level() > Level::Debug {
            return;
        }
        let msg = record.args().to_string();
        if record.level() <= Level::Info {
            to_kmsg(record.level(), &msg);
        }
        to_file(record.level(), &msg);
    }

    fn flush(&self) {
        self.stderr.flush();
    }
}

/// Write `msg` to `/dev/kmsg` only (if it is open).
pub fn to_kmsg(level: Level, msg: &str) {
    let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kmsg) = sinks.kmsg.as_mut() {
        let _ = kmsg.write_all(kmsg_record(level, msg).as_bytes());
    }
}

/// Write `msg` to the log file only (kept until one is attached).
pub fn to_file(level: Level, msg: &str) {
    let line = file_line(now() as u64, level, std::process::id(), msg);
    let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    let sinks = &mut *sinks;
    // Lines wait in `pending` until a file takes them: before the file is attached, and
    // while it refuses them (a full filesystem: ENOSPC), so that a run that makes room
    // still gets its first lines into the file.
    if sinks.pending.len() < PENDING_MAX {
        sinks.pending.push(line);
    }
    if let Some(file) = sinks.file.as_mut() {
        let written = sinks
            .pending
            .iter()
            .take_while(|l| file.write_all(l.as_bytes()).is_ok())
            .count();
        sinks.pending.drain(..written);
    }
}

/// Set up logging: stderr at info (debug with `-v`, or as `RUST_LOG` says; errors always),
/// and `/dev/kmsg` if present and `kmsg` is set (commands that change nothing leave the
/// kernel log alone).
pub fn init(verbose: bool, kmsg: bool) {
    let default = if verbose { "debug" } else { "info" };
    let stderr =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
            .format(|buf, record| match record.level() {
                Level::Info => writeln!(
                    buf,
                    "{}btrfs-rollback: {}",
                    prefix(Level::Info),
                    record.args()
                ),
                level => writeln!(
                    buf,
                    "{}btrfs-rollback: {}: {}",
                    prefix(level),
                    level.as_str().to_lowercase(),
                    record.args()
                ),
            })
            .build();
    let max = stderr.filter().max(LevelFilter::Debug);
    let journal = stderr_is_the_journal();
    JOURNAL.store(journal, Ordering::Relaxed);
    if kmsg && !journal {
        if let Ok(kmsg) = File::options().write(true).open("/dev/kmsg") {
            SINKS.lock().unwrap_or_else(|e| e.into_inner()).kmsg = Some(kmsg);
        }
    }
    if log::set_boxed_logger(Box::new(Logger { stderr })).is_ok() {
        log::set_max_level(max);
    }
}

/// Whether stderr is systemd's journal (set once by [`init`]).
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// What a line on stderr starts with at `level`: its syslog priority ("<3>" for an error)
/// when stderr is the journal, which takes it as the line's priority (and strips it, also
/// from what it shows on the console), so that `journalctl -p warning` shows warnings and
/// errors; nothing otherwise.
pub fn prefix(level: Level) -> &'static str {
    if !JOURNAL.load(Ordering::Relaxed) {
        return "";
    }
    match level {
        Level::Error => "<3>",
        Level::Warn => "<4>",
        Level::Info => "<6>",
        Level::Debug | Level::Trace => "<7>",
    }
}

/// Whether stderr is a stream to systemd's journal: `$JOURNAL_STREAM` ("DEVICE:INODE", which
/// systemd sets for a service whose stdout or stderr it connects to the journal) names it.
fn stderr_is_the_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => names_stream(&value.to_string_lossy(), st.st_dev, st.st_ino),
        Err(_) => false,
    }
}

/// Whether a `$JOURNAL_STREAM` value names the file with this device and inode number.
fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    let parse = |(d, i): (&str, &str)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?));
    value.split_once(':').and_then(parse) == Some((dev, ino))
}

/// The log file while it is attached. Dropping it flushes the file to disk and closes it
/// (before the volume is unmounted).
pub struct LogFile {
    path: PathBuf,
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
        let file = sinks.file.take();
        let pending = std::mem::take(&mut sinks.pending);
        drop(sinks);
        if let Some(mut file) = file {
            // What the file refused while the filesystem was full: one more try.
            for line in &pending {
                if file.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
            if let Err(e) = file.sync_all() {
                log::warn!("cannot flush the log file {}: {e}", self.path.display());
            }
        }
    }
}

/// Make what the log file holds so far durable (after a step that must be on record even if
/// the power goes right after: the swap). Failures are ignored: the log never stops a run.
pub fn sync_file() {
    let sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(file) = sinks.file.as_ref() {
        let _ = file.sync_data();
    }
}

/// Open `path` for appending: relative to `dir` (the top-level volume), or as given if absolute
/// (a file in the initrd). Writes the lines logged so far. A file past `cap` bytes is first
/// moved to `<path>.old`.
///
/// A relative path is resolved below `dir` without following any symbolic link (see
/// `beneath.rs`); the command line refuses `..`. A FIFO, socket or symbolic link at the path
/// is moved aside to `<path>.moved-aside.<unix time>` with a warning, and a fresh log file is
/// created; a directory is left alone (the run goes on without a log file). Nothing here
/// blocks. An error means the run goes on without a log file (the caller warns).
pub fn attach_file(dir: BorrowedFd<'_>, path: &Path, cap: u64) -> std::io::Result<LogFile> {
    let shown = if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new("<top-level>").join(path)
    };
    let (parent, name) = if path.is_absolute() {
        let name = path
            .file_name()
            .ok_or_else(|| std::io::Error::other(format!("{} names no file", shown.display())))?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        let fd = nix::fcntl::openat(
            nix::fcntl::AT_FDCWD,
            parent,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        (fd, name)
    } else {
        beneath::open_parent(dir, path).map_err(|e| match e {
            Errno::ELOOP => std::io::Error::other(format!(
                "a directory on the way to {} is a symbolic link, which is never followed",
                shown.display()
            )),
            Errno::EXDEV => std::io::Error::other(format!(
                "{} leads out of the top-level volume",
                shown.display()
            )),
            e => e.into(),
        })?
    };
    let parent = parent.as_fd();
    let mut file = open_log(parent, name, &shown)?;
    if file.metadata()?.len() > cap {
        let mut old = name.to_os_string();
        old.push(".old");
        match nix::fcntl::renameat(parent, name, parent, old.as_os_str()) {
            Ok(()) => file = open_log(parent, name, &shown)?,
            Err(e) => log::warn!(
                "cannot move the log file {} to {:?} ({e}); appending to it as it is",
                shown.display(),
                old
            ),
        }
    }
    let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    // Only what was written leaves `pending`: a full filesystem (ENOSPC) keeps the rest for
    // the next try (`Session::close` attaches again once the run may have made room).
    let mut written = 0;
    let result = sinks
        .pending
        .iter()
        .try_for_each(|l| file.write_all(l.as_bytes()).map(|()| written += 1));
    sinks.pending.drain(..written);
    result?;
    sinks.file = Some(file);
    Ok(LogFile { path: shown })
}

/// Open `name` in `parent` for appending, creating it; move away first whatever is there and
/// is not a regular file.
fn open_log(parent: BorrowedFd<'_>, name: &OsStr, shown: &Path) -> std::io::Result<File> {
    use nix::sys::stat::fstatat;
    match fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if beneath::kind_of_mode(st.st_mode) == "a regular file" => {}
        // A directory may be anything, `persist` included: never moved.
        Ok(st) if beneath::kind_of_mode(st.st_mode) == "a directory" => {
            return Err(std::io::Error::other(format!(
                "{} is a directory, not a log file; it is left alone",
                shown.display()
            )))
        }
        Ok(st) => {
            let what = beneath::kind_of_mode(st.st_mode);
            let mut aside = name.to_os_string();
            aside.push(format!(".moved-aside.{}", now()));
            crate::ioctl::renameat2(
                parent,
                name,
                parent,
                &aside,
                crate::ioctl::Rename::NoReplace,
            )
            .map_err(|e| {
                std::io::Error::other(format!(
                    "{} is {what}, not a log file, and cannot be moved aside to {:?} ({e})",
                    shown.display(),
                    aside
                ))
            })?;
            log::warn!(
                "{} was {what}, not a log file: moved it aside to {:?} and started a new log",
                shown.display(),
                aside
            );
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT;
    let fd = beneath::open(parent, Path::new(name), flags, 0o600)?;
    // Something could have replaced the name between the look and the open.
    let what = beneath::kind(fd.as_fd())?;
    if what != "a regular file" {
        return Err(std::io::Error::other(format!(
            "{} is {what}, not a log file",
            shown.display()
        )));
    }
    Ok(File::from(fd))
}

/// One `/dev/kmsg` record: syslog facility "user", the message's priority, and the tag that
/// journald turns into `SYSLOG_IDENTIFIER=btrfs-rollback`.
pub fn kmsg_record(level: Level, msg: &str) -> String {
    let priority = match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    };
    let mut text: String = msg.replace('\n', " ");
    if text.len() > KMSG_MAX {
        let mut end = KMSG_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    format!("<{}>btrfs-rollback: {text}\n", 8 + priority)
}

/// One log file line: `2026-11-27T10:04:05Z [1234] INFO message`.
pub fn file_line(unix_secs: u64, level: Level, pid: u32, msg: &str) -> String {
    let (y, mo, d, h, mi, s) = utc(unix_secs);
    let msg = msg.replace('\n', " ");
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z [{pid}] {level:<5} {msg}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_are_one_line_each() {
        let line = file_line(1_795_774_145, Level::Info, 42, "deleted \"a\nb\"");
        assert_eq!(line, "2026-11-27T10:09:05Z [42] INFO  deleted \"a b\"\n");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn journal_stream_is_matched_by_device_and_inode() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235));
        assert!(!names_stream("9:1234", 8, 1234));
        for bad in ["", "8", "8:", ":1234", "8:1234:5", "x:1234", "-8:1234"] {
            assert!(!names_stream(bad, 8, 1234), "{bad:?}");
        }
    }

    #[test]
    fn kmsg_records_carry_facility_priority_and_tag() {
        assert_eq!(
            kmsg_record(Level::Info, "rolled back"),
            "<14>btrfs-rollback: rolled back\n"
        );
        assert!(kmsg_record(Level::Error, "x").starts_with("<11>"));
        let long = kmsg_record(Level::Warn, &"é".repeat(1000));
        assert!(long.len() <= KMSG_MAX + 30);
        assert!(long.ends_with('\n'));
    }
}
