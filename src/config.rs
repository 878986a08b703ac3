//! Defaults from a configuration file, so that `list`, `diff`, `restore` and `run` on an
//! installed system agree with the boot's run without repeating its flags. The NixOS module
//! writes `/etc/btrfs-rollback.conf` into the system and into the initrd:
//!
//! ```text
//! # comment
//! device = /dev/mapper/cryptroot
//! root = root
//! blank = root-blank
//! log = rollback.log
//! wait = 10
//! keep-old-roots = 10
//! ```
//!
//! One `key = value` a line; keys are the long flags without `--`; the value is the rest of
//! the line, trimmed (no quoting). A flag on the command line wins over the file. The file is
//! `--config PATH`, else `$BTRFS_ROLLBACK_CONFIG`, else `/etc/btrfs-rollback.conf`; only
//! the last may be missing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Read when neither `--config` nor the environment names another file.
pub const DEFAULT_PATH: &str = "/etc/btrfs-rollback.conf";
/// Names the file instead of [`DEFAULT_PATH`] (for tests, or a second layout).
pub const ENV_VAR: &str = "BTRFS_ROLLBACK_CONFIG";

/// The keys a file may set, as flags (and clap's argument ids with `_` for `-`).
const KEYS: &[&str] = &[
    "device",
    "mountpoint",
    "root",
    "blank",
    "wait",
    "log",
    "keep-old-roots",
    "keep-days",
];

/// The settings of one file: (key, value) in file order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub values: Vec<(String, String)>,
}

impl Config {
    /// The value set for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Make the file's values the defaults of every subcommand that has the option.
    pub fn apply(&self, mut command: clap::Command) -> clap::Command {
        let subcommands: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in subcommands {
            for (key, value) in &self.values {
                let id = key.replace('-', "_");
                command = command.mut_subcommand(&name, |sub| {
                    if sub.get_arguments().any(|a| a.get_id() == id.as_str()) {
                        // clap keeps defaults as &'static str without its "string" feature;
                        // a handful of short strings, once per process.
                        let value: &'static str = Box::leak(value.clone().into_boxed_str());
                        sub.mut_arg(id.as_str(), |a| a.default_value(value))
                    } else {
                        sub
                    }
                });
            }
        }
        command
    }
}

/// Parse the text of `path`; errors name the file and the line.
pub fn parse(path: &Path, text: &str) -> Result<Config> {
    let mut config = Config::default();
    for (number, line) in text.lines().enumerate() {
        let at = || format!("{}:{}", path.display(), number + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!("{}: expected `key = value`, found {line:?}", at());
        };
        let (key, value) = (key.trim(), value.trim());
        if !KEYS.contains(&key) {
            bail!("{}: unknown key {key:?} (known: {})", at(), KEYS.join(", "));
        }
        if value.is_empty() {
            bail!("{}: {key} has no value", at());
        }
        if config.get(key).is_some() {
            bail!("{}: {key} is set a second time", at());
        }
        let minimum = match key {
            "wait" | "keep-days" => Some(0),
            "keep-old-roots" => Some(1),
            _ => None,
        };
        if let Some(minimum) = minimum {
            match value.parse::<u32>() {
                Ok(n) if n >= minimum => {}
                _ => bail!(
                    "{}: {key} = {value:?} is not a whole number >= {minimum}",
                    at()
                ),
            }
        }
        config.values.push((key.to_owned(), value.to_owned()));
    }
    Ok(config)
}

/// The file named by `--config PATH` / `--config=PATH` in `args` (before a `--`), else by
/// [`ENV_VAR`]. `None`: use [`DEFAULT_PATH`].
pub fn explicit_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os(ENV_VAR)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Load the configuration: `explicit` must exist; [`DEFAULT_PATH`] may be missing (empty
/// configuration then).
pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let path = explicit.unwrap_or(Path::new(DEFAULT_PATH));
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Config::default())
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the configuration file {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config> {
        parse(Path::new("/etc/test.conf"), text)
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse_str(text).unwrap_err())
    }

    #[test]
    fn the_module_s_file_parses() {
        // As nix/module.nix writes it (check-eval.sh asserts the module's side).
        let config = parse_str(
            "# boot.initrd.btrfsRollback: the defaults of btrfs-rollback; the boot's run gets \
             the same values as flags.\nblank = root-blank\ndevice = /dev/mapper/cryptroot\n\
             keep-old-roots = 10\nlog = rollback.log\nroot = root\nwait = 10\n",
        )
        .unwrap();
        assert_eq!(config.get("device"), Some("/dev/mapper/cryptroot"));
        assert_eq!(config.get("keep-old-roots"), Some("10"));
        assert_eq!(config.get("mountpoint"), None);
        assert_eq!(config.values.len(), 6);
    }

    #[test]
    fn values_are_the_trimmed_rest_of_the_line() {
        let config = parse_str("  root =  my root = odd \n\n   # indented comment\n").unwrap();
        assert_eq!(config.get("root"), Some("my root = odd"));
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        assert_eq!(
            error("root = root\nblank root-blank\n"),
            "/etc/test.conf:2: expected `key = value`, found \"blank root-blank\""
        );
        assert!(error("\n\nroots = x").starts_with("/etc/test.conf:3: unknown key \"roots\""));
        assert_eq!(error("log =  "), "/etc/test.conf:1: log has no value");
        assert_eq!(
            error("root = a\nroot = b"),
            "/etc/test.conf:2: root is set a second time"
        );
        assert_eq!(
            error("wait = soon"),
            "/etc/test.conf:1: wait = \"soon\" is not a whole number >= 0"
        );
        assert!(error("keep-old-roots = 0").contains(">= 1"));
    }

    #[test]
    fn config_path_from_the_command_line_then_the_environment() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            explicit_path(&args(&["b", "list", "--config", "/a.conf"])),
            Some(PathBuf::from("/a.conf"))
        );
        assert_eq!(
            explicit_path(&args(&["b", "--config=/b.conf", "run"])),
            Some(PathBuf::from("/b.conf"))
        );
        // After `--` it is a value, not the option (and the environment is not set in tests).
        if std::env::var_os(ENV_VAR).is_none() {
            assert_eq!(
                explicit_path(&args(&["b", "restore", "--", "--config"])),
                None
            );
        }
    }

    #[test]
    fn a_missing_default_file_is_fine_a_missing_named_one_is_not() {
        let dir =
            std::env::temp_dir().join(format!("btrfs-rollback-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.conf");
        let e = format!("{:#}", load(Some(&missing)).unwrap_err());
        assert!(e.starts_with("cannot read the configuration file "), "{e}");
        assert!(e.contains("missing.conf"), "{e}");
        let present = dir.join("present.conf");
        std::fs::write(&present, "device = /dev/vdb\n").unwrap();
        assert_eq!(
            load(Some(&present)).unwrap().get("device"),
            Some("/dev/vdb")
        );
        std::fs::remove_dir_all(&dir).unwrap();
        if !Path::new(DEFAULT_PATH).exists() {
            assert_eq!(load(None).unwrap(), Config::default());
        }
    }
}
