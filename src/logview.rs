//! `btrfs-rollback log [--lines N]`: the end of the log file (`rollback.log`, and before it
//! `rollback.log.old` when the current one holds fewer lines), read from the top-level volume
//! mounted read-only, never through a symbolic link (`beneath.rs`). An absolute `--log` (a
//! file outside the volume) is read as it is.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::beneath;

/// Print the last `lines` lines of the log file at `path` (relative to the top-level volume
/// `fs`, or absolute).
pub fn show(fs: BorrowedFd<'_>, path: &Path, lines: usize) -> Result<()> {
    print!("{}", tail(fs, path, lines)?);
    Ok(())
}

/// The last `lines` lines of the log and, if it has fewer, of its `.old` copy before them.
pub fn tail(fs: BorrowedFd<'_>, path: &Path, lines: usize) -> Result<String> {
    let mut old = OsString::from(path.as_os_str());
    old.push(".old");
    let current = read(fs, path)?;
    let older = read(fs, Path::new(&old))?;
    if current.is_none() && older.is_none() {
        bail!(
            "there is no log file {} (nor {}): no command that changes the disk has run on \
             this filesystem with this --log yet",
            shown(path).display(),
            shown(Path::new(&old)).display()
        );
    }
    let text = older.unwrap_or_default() + &current.unwrap_or_default();
    Ok(last_lines(&text, lines).to_string())
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let start = body
        .rmatch_indices('\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &text[start..]
}

fn shown(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new("<top-level>").join(path)
    }
}

/// The file's text (bytes that are not UTF-8 replaced), `None` if it does not exist.
fn read(fs: BorrowedFd<'_>, path: &Path) -> Result<Option<String>> {
    let opened = if path.is_absolute() {
        nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        )
    } else {
        beneath::open(fs, path, OFlag::O_RDONLY, 0)
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => bail!(
            "{} is (or lies behind) a symbolic link, which is not followed",
            shown(path).display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", shown(path).display())),
    };
    let what = beneath::kind(fd.as_fd())
        .with_context(|| format!("cannot stat {}", shown(path).display()))?;
    if what != "a regular file" {
        bail!("{} is {what}, not a log file", shown(path).display());
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", shown(path).display()))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(last_lines("a\nb\nc\n", 5), "a\nb\nc\n");
        assert_eq!(last_lines("a\nb\nc", 1), "c");
        assert_eq!(last_lines("a\nb\n", 0), "");
        assert_eq!(last_lines("", 3), "");
    }
}
