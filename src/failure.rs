//! How a command fails: what went wrong, and what state the disk is in now. Commands return a
//! [`Failure`]; `cli.rs` prints it once (text on stderr, and with `--json` a document on
//! stdout) and turns it into the exit status.

use std::fmt;

use anyhow::Error;

use crate::json::Json;

/// What is on the disk after a failure. The words (`word`) are the `disk` field of a JSON
/// error document; the exit status follows from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// Nothing that matters was changed: `root` is the subvolume it was, with everything
    /// nested in it (leftovers of earlier runs may have been tidied).
    Untouched,
    /// `root` is the subvolume it was, but what was nested in it was deleted to make room on a
    /// full filesystem.
    NestedDeleted,
    /// There is no `root`: the old one was deleted to make room and no fresh one could be
    /// made. The next run creates it from the blank.
    NoRoot,
    /// `root` was exchanged but the commit failed: after a reboot it is either the old or
    /// the new subvolume (the next run handles both).
    Exchanged,
    /// The fresh root is in place and committed; deleting (or keeping) the old one failed.
    FreshRootInPlace,
    /// The restored root is in place and committed; what followed failed.
    RestoredRootInPlace,
    /// `forget`: part of the old root (nested subvolumes) was deleted, the rest is still there.
    OldRootPartlyDeleted,
}

impl Disk {
    /// The word for JSON: `untouched`, `fresh_root_in_place`, ...
    pub fn word(self) -> &'static str {
        match self {
            Disk::Untouched => "untouched",
            Disk::NestedDeleted => "nested_deleted",
            Disk::NoRoot => "no_root",
            Disk::Exchanged => "exchanged",
            Disk::FreshRootInPlace => "fresh_root_in_place",
            Disk::RestoredRootInPlace => "restored_root_in_place",
            Disk::OldRootPartlyDeleted => "old_root_partly_deleted",
        }
    }

    /// 1: refused or failed before the swap (`root` is the subvolume it was, or there is none
    /// and the next run creates it); 3: a new root is in place (or may be, `exchanged`) and
    /// only what follows failed.
    pub fn exit_status(self) -> u8 {
        match self {
            Disk::Untouched | Disk::NestedDeleted | Disk::NoRoot | Disk::OldRootPartlyDeleted => {
                EXIT_REFUSED
            }
            Disk::Exchanged | Disk::FreshRootInPlace | Disk::RestoredRootInPlace => {
                EXIT_CLEANUP_FAILED
            }
        }
    }
}

/// Exit status: refused or failed before the swap; `root` is the subvolume it was.
pub const EXIT_REFUSED: u8 = 1;
/// Exit status: bad command line (as clap uses it).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the fresh `root` is in place, but deleting the old one failed.
pub const EXIT_CLEANUP_FAILED: u8 = 3;

/// A command that did not do what it was asked.
#[derive(Debug)]
pub struct Failure {
    error: Error,
    /// What the disk is like now.
    pub disk: Disk,
    /// The sentence after the error that says so, if the error does not say it itself.
    state: Option<String>,
    usage: bool,
}

impl Failure {
    /// `error` already says what state the disk is in.
    pub fn new(disk: Disk, error: Error) -> Failure {
        Failure {
            error,
            disk,
            state: None,
            usage: false,
        }
    }

    /// Failed before anything was changed: "...; nothing was changed".
    pub fn untouched(error: Error) -> Failure {
        Failure::new(Disk::Untouched, error).state("nothing was changed")
    }

    /// A bad command line (exit status 2); nothing was looked at.
    pub fn usage(error: Error) -> Failure {
        Failure {
            usage: true,
            ..Failure::new(Disk::Untouched, error)
        }
    }

    /// Say what state the disk is in after the error ("\"root\" on /dev/vdb was not changed").
    pub fn state(mut self, state: impl Into<String>) -> Failure {
        self.state = Some(state.into());
        self
    }

    pub fn exit_status(&self) -> u8 {
        if self.usage {
            EXIT_USAGE
        } else {
            self.disk.exit_status()
        }
    }

    /// `{"version": 1, "error": {"message", "exit_status", "disk"}}` (the `error` document
    /// of docs/json.md).
    pub fn to_json(&self) -> Json {
        Json::Object(vec![
            ("version", Json::Int(crate::render::JSON_VERSION)),
            (
                "error",
                Json::Object(vec![
                    ("message", Json::str(self.to_string())),
                    ("exit_status", Json::Int(self.exit_status().into())),
                    ("disk", Json::str(self.disk.word())),
                ]),
            ),
        ])
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::untouched(error)
    }
}

/// The whole chain on one line, then whether root is needed, then the state of the disk.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)?;
        if denied(&self.error) && running_as_root() == Some(false) {
            write!(f, " (btrfs-rollback needs root)")?;
        }
        if let Some(state) = &self.state {
            write!(f, "; {state}")?;
        }
        Ok(())
    }
}

/// Whether a system call in the chain said EACCES or EPERM.
fn denied(error: &Error) -> bool {
    use crate::ioctl::Errno;
    let errno = crate::erase::errno_of(error).or_else(|| {
        error.chain().find_map(|c| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error())
                .map(Errno::from_raw)
        })
    });
    matches!(errno, Some(Errno::EACCES | Errno::EPERM))
}

/// Whether the effective user is root, from `/proc/self/status` (`None` if unreadable).
fn running_as_root() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let effective = uids.split_whitespace().nth(1)?;
    Some(effective == "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_the_state_and_exit_statuses_follow_it() {
        let f = Failure::untouched(anyhow::anyhow!("device /dev/x did not appear"));
        assert_eq!(
            f.to_string(),
            "device /dev/x did not appear; nothing was changed"
        );
        assert_eq!(f.exit_status(), 1);
        let f = Failure::new(Disk::FreshRootInPlace, anyhow::anyhow!("x"));
        assert_eq!(f.exit_status(), 3);
        assert_eq!(Failure::usage(anyhow::anyhow!("bad")).exit_status(), 2);
        let json = Failure::new(Disk::Exchanged, anyhow::anyhow!("a \"b\""))
            .to_json()
            .to_string_pretty();
        assert_eq!(
            json,
            "{\n  \"version\": 1,\n  \"error\": {\n    \"message\": \"a \\\"b\\\"\",\n    \"exit_status\": 3,\n    \
             \"disk\": \"exchanged\"\n  }\n}\n"
        );
    }

    /// Every `disk` word and exit status is in docs/json.md's `Error` schema.
    #[test]
    fn the_error_schema_in_docs_json_md_names_every_disk_word() {
        let doc = include_str!("../docs/json.md");
        let block = doc
            .split("```schema Error\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/json.md has a schema Error block");
        let (disk, status) = (
            block.lines().find(|l| l.starts_with("disk:")).unwrap(),
            block
                .lines()
                .find(|l| l.starts_with("exit_status:"))
                .unwrap(),
        );
        for d in [
            Disk::Untouched,
            Disk::NestedDeleted,
            Disk::NoRoot,
            Disk::Exchanged,
            Disk::FreshRootInPlace,
            Disk::RestoredRootInPlace,
            Disk::OldRootPartlyDeleted,
        ] {
            assert!(disk.contains(&format!("\"{}\"", d.word())), "{d:?}: {disk}");
            assert!(status.contains(&d.exit_status().to_string()), "{d:?}");
        }
        assert!(status.contains(&EXIT_USAGE.to_string()));
    }
}
