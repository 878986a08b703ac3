//! The command line: parsing, logging set-up, and the one place where errors and exit codes
//! are decided.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config;
use crate::diff;
use crate::failure::{Failure, EXIT_USAGE};
use crate::forget::{self, ForgetOptions};
use crate::list;
use crate::logging;
use crate::logview;
use crate::names::{self, Names, OLD_ROOTS};
use crate::restore::{self, RestoreOptions};
use crate::rollback::{self, Retention, RunOptions};
use crate::session::{Access, Session, Target};

/// The exit-status contract, for `--help` and the man page (every subcommand).
const EXIT_STATUS_HELP: &str = "\
Exit status, every command:
  0  done: rolled back (run), restored (restore), deleted (forget), or
     a read-only command finished (list, diff, log, any --dry-run)
  1  refused or failed with no new root in place; the message (and the
     disk word of --json) says what state the disk is in: almost
     always as it was; on a full disk, or when forget deleted only part
     of an old root, it says what went and that the next run (or forget)
     finishes it
  2  usage error (bad option, value or name): nothing was looked at
  3  a new root is in place (or may be) but a later step failed; the
     message says what is where (run: the fresh root is in place, the
     old one not fully deleted, and the next run finishes it; restore:
     the old root was exchanged in)

Defaults come from /etc/btrfs-rollback.conf when it exists (--config).
`btrfs-rollback COMMAND --help`: a command's options and examples.";

/// Replace a btrfs `root` subvolume, and everything nested in it, with a fresh snapshot of a
/// blank one, crash-safely ("erase your darlings"). Meant for stage 1 of the boot, after the
/// disk is unlocked and before `/` is mounted; works the same from a rescue shell.
#[derive(Debug, Parser)]
#[command(version, arg_required_else_help = true, max_term_width = 80)]
#[command(after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// Log every step (also on stderr; RUST_LOG=debug does the same).
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Read the defaults of these options from PATH (`key = value` lines, keys as the long
    /// options) instead of $BTRFS_ROLLBACK_CONFIG or /etc/btrfs-rollback.conf, which the
    /// NixOS module writes. Options given here win.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replace ROOT with a fresh snapshot of BLANK and delete the old one with everything nested
    /// (or keep it under old_roots/ with --keep-old-roots or --keep-days).
    #[command(after_help = "\
Examples:
  btrfs-rollback run --dry-run     the plan: what would go, by path and id
  btrfs-rollback run               roll back with the defaults (or config)
  btrfs-rollback run --device /dev/mapper/luks --root @ --blank @blank
  btrfs-rollback run --keep-old-roots 5 --keep-days 14
  btrfs-rollback run --mountpoint /run/top --verbose")]
    Run(RunArgs),
    /// Show the top-level subvolumes, ROOT's nested tree, BLANK, the kept old roots, and what
    /// `run` would do. Read-only.
    #[command(after_help = "\
Examples:
  btrfs-rollback list
  btrfs-rollback list --keep-old-roots 2   why each old root stays or goes
  btrfs-rollback list --mountpoint /run/top --json")]
    List(ListArgs),
    /// Show what the next rollback erases: files and directories in ROOT that are new, changed
    /// or gone compared with BLANK. Read-only.
    #[command(after_help = "\
Examples:
  btrfs-rollback diff --mountpoint /run/top
  btrfs-rollback diff --exclude '/var/cache/**' --exclude /tmp
  btrfs-rollback diff --json
  btrfs-rollback diff 2026-11-27_10-30-01   what that old root held")]
    Diff(DiffArgs),
    /// Make the kept old root old_roots/NAME the root for the next boot; the replaced root is
    /// kept as an old root. The next `run` keeps the restored root once.
    #[command(after_help = "\
Examples:
  btrfs-rollback list                          the old roots, by name
  btrfs-rollback restore --dry-run 2026-11-27_10-30-01   what it would do
  btrfs-rollback restore 2026-11-27_10-30-01   boot that one next time")]
    Restore(OldRootArgs),
    /// Delete the kept old root old_roots/NAME with everything nested in it (the deletion
    /// `run` prunes old roots with); --dry-run shows what would go.
    #[command(after_help = "\
Examples:
  btrfs-rollback forget --dry-run 2026-11-27_10-30-01   what would go
  btrfs-rollback forget 2026-11-27_10-30-01")]
    Forget(OldRootArgs),
    /// Print the end of the log file (rollback.log, and rollback.log.old before it) from the
    /// top-level volume, mounted read-only.
    #[command(after_help = "\
Examples:
  btrfs-rollback log                the last 50 lines
  btrfs-rollback log --lines 200 --mountpoint /run/top")]
    Log(LogArgs),
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// The unlocked btrfs block device.
    #[arg(long, value_name = "PATH", default_value = "/dev/mapper/cryptroot")]
    device: PathBuf,
    /// Where to mount the top-level volume (subvolid=5) while working; created if missing.
    #[arg(long, value_name = "DIR", default_value = "/mnt")]
    mountpoint: PathBuf,
    /// The subvolume to replace, a name in the top-level volume.
    #[arg(long, value_name = "NAME", default_value = "root")]
    root: OsString,
    /// The read-only snapshot to replace it with, a name in the top-level volume.
    #[arg(long, value_name = "NAME", default_value = "root-blank")]
    blank: OsString,
    /// How long to wait for the device to appear.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        allow_negative_numbers = true
    )]
    wait: u64,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Log file to append to: relative to the top-level volume (no "..", no symbolic links
    /// on the way), or an absolute path.
    #[arg(long, value_name = "PATH", default_value = "rollback.log")]
    log: PathBuf,
    /// Go on even if ROOT, or a subvolume nested in it, is mounted on this system (as the
    /// running system's `/`): the running system's files are then deleted under it. Without
    /// it, a mounted ROOT is refused (exit 1).
    #[arg(long)]
    force_mounted: bool,
    /// Print the plan (every subvolume that would go, by path and id) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: print the plan as JSON.
    #[arg(long, requires = "dry_run")]
    json: bool,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// How long old roots are kept: `run` applies it, `list` shows what it would do.
#[derive(Debug, Args)]
struct RetentionArgs {
    /// Keep old roots under old_roots/<creation time> instead of deleting them, at most N,
    /// ranked by last use (the most recently used is always kept). Only old roots this tool
    /// put there (marked with the trusted.btrfs-rollback.retired attribute) are pruned.
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_negative_numbers = true
    )]
    keep_old_roots: Option<u32>,
    /// Keep old roots under old_roots/<creation time> instead of deleting them, for D days
    /// after they were retired (the most recently used is always kept). With
    /// --keep-old-roots, both limits apply.
    #[arg(
        long,
        value_name = "D",
        value_parser = clap::value_parser!(u32).range(1..),
        allow_negative_numbers = true
    )]
    keep_days: Option<u32>,
}

impl RetentionArgs {
    fn retention(&self) -> Retention {
        Retention {
            count: self.keep_old_roots,
            days: self.keep_days,
        }
    }
}

#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    retention: RetentionArgs,
}

#[derive(Debug, Args)]
struct DiffArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Leave out paths matching PATTERN (`*` matches within a name, `**` across names; a
    /// pattern naming a directory covers what is in it). May be given more than once.
    #[arg(long, value_name = "PATTERN", value_parser = diff::Pattern::check)]
    exclude: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Compare the old root old_roots/NAME (as `list` shows it) instead of ROOT: what it
    /// holds that BLANK does not.
    name: Option<OsString>,
}

/// The arguments of `restore` and `forget`, the commands that change one old root.
#[derive(Debug, Args)]
struct OldRootArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Log file to append to, as for `run`.
    #[arg(long, value_name = "PATH", default_value = "rollback.log")]
    log: PathBuf,
    /// The old root, a name in old_roots/ as `list` shows it ("old_roots/NAME" is the same).
    name: OsString,
    /// Say what would be done, and change nothing (read-only).
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: print it as JSON.
    #[arg(long, requires = "dry_run")]
    json: bool,
}

#[derive(Debug, Args)]
struct LogArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The log file, as for `run`: relative to the top-level volume, or an absolute path.
    #[arg(long, value_name = "PATH", default_value = "rollback.log")]
    log: PathBuf,
    /// How many lines to print from the end.
    #[arg(long, value_name = "N", default_value_t = 50)]
    lines: usize,
}

/// `--log`: no `..` anywhere, and a relative path must name a file below the top level.
fn check_log(path: &std::path::Path) -> Result<()> {
    use std::path::Component;
    if path.components().any(|c| c == Component::ParentDir) {
        anyhow::bail!(
            "--log {} contains \"..\": give a path below the top-level volume (or an absolute \
             path)",
            names::quoted(path)
        );
    }
    if !path.is_absolute() && !crate::beneath::is_plain_relative(path) {
        anyhow::bail!(
            "--log {} names no file: give a file name relative to the top-level volume",
            names::quoted(path)
        );
    }
    Ok(())
}

impl TargetArgs {
    fn target(&self) -> Result<Target> {
        Ok(Target {
            device: self.device.clone(),
            mountpoint: self.mountpoint.clone(),
            names: Names::new(&self.root, &self.blank)?,
            wait: Duration::from_secs(self.wait),
        })
    }
}

/// `NAME` of `restore` and `forget`: a name in old_roots/, also accepted as "old_roots/NAME".
fn old_root_arg(name: &OsString) -> Result<OsString> {
    use std::os::unix::ffi::OsStrExt;
    let prefix = format!("{OLD_ROOTS}/");
    let bare = name
        .as_bytes()
        .strip_prefix(prefix.as_bytes())
        .map_or(name.as_os_str(), std::ffi::OsStr::from_bytes);
    names::check_component("NAME", bare)?;
    Ok(bare.to_os_string())
}

/// The command line's definition, without the configuration file's defaults: for the
/// generator of the man page and completions (src/bin/btrfs-rollback-gen.rs).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parse `args` with the configuration file's values as the defaults.
fn parse(args: Vec<OsString>) -> std::result::Result<Cli, ExitCode> {
    let config = config::load(config::explicit_path(&args).as_deref()).map_err(|e| {
        eprintln!("btrfs-rollback: error: {e:#}");
        ExitCode::from(EXIT_USAGE)
    })?;
    let matches = config.apply(Cli::command()).get_matches_from(args);
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

impl Command {
    fn target(&self) -> &TargetArgs {
        match self {
            Command::Run(a) => &a.target,
            Command::List(a) => &a.target,
            Command::Diff(a) => &a.target,
            Command::Restore(a) | Command::Forget(a) => &a.target,
            Command::Log(a) => &a.target,
        }
    }

    /// Whether errors go to stdout as a JSON document too.
    fn json(&self) -> bool {
        match self {
            Command::Run(a) => a.json,
            Command::List(a) => a.json,
            Command::Diff(a) => a.json,
            Command::Restore(a) | Command::Forget(a) => a.json,
            Command::Log(_) => false,
        }
    }

    /// What the command needs of the filesystem.
    fn access(&self) -> Access<'_> {
        match self {
            Command::List(_) | Command::Diff(_) | Command::Log(_) => Access::Look,
            Command::Run(a) if a.dry_run => Access::DryRun,
            Command::Restore(a) | Command::Forget(a) if a.dry_run => Access::DryRun,
            Command::Run(RunArgs { log, .. })
            | Command::Restore(OldRootArgs { log, .. })
            | Command::Forget(OldRootArgs { log, .. }) => Access::Change { log },
        }
    }

    /// The checks clap cannot make; a failure is a usage error (exit status 2).
    fn check(&self) -> Result<Target> {
        let target = self.target().target()?;
        match self {
            Command::Restore(a) | Command::Forget(a) => {
                check_log(&a.log).and(old_root_arg(&a.name).map(drop))?
            }
            Command::Run(a) => check_log(&a.log)?,
            Command::Log(a) => check_log(&a.log)?,
            Command::Diff(DiffArgs { name: Some(n), .. }) => drop(old_root_arg(n)?),
            Command::List(_) | Command::Diff(_) => {}
        }
        Ok(target)
    }

    /// Run the command in `session`.
    fn call(&self, session: &Session, target: &Target) -> std::result::Result<(), Failure> {
        match self {
            Command::Run(a) => rollback::run(
                session,
                target,
                &RunOptions {
                    force_mounted: a.force_mounted,
                    dry_run: a.dry_run,
                    json: a.json,
                    retention: a.retention.retention(),
                },
            ),
            Command::Restore(a) => restore::restore(
                session,
                target,
                &RestoreOptions {
                    dry_run: a.dry_run,
                    json: a.json,
                },
                &old_root_arg(&a.name)?,
            ),
            Command::Forget(a) => forget::forget(
                session,
                target,
                &ForgetOptions {
                    dry_run: a.dry_run,
                    json: a.json,
                },
                &old_root_arg(&a.name)?,
            ),
            Command::Log(a) => Ok(logview::show(session.fd(), &a.log, a.lines)?),
            Command::List(a) => Ok(list::list(
                session,
                target,
                &a.retention.retention(),
                a.json,
            )?),
            Command::Diff(a) => {
                let name = a.name.as_ref().map(old_root_arg).transpose()?;
                Ok(diff::diff(
                    session,
                    target,
                    name.as_deref(),
                    &a.exclude,
                    a.json,
                )?)
            }
        }
    }
}

/// Check the command line, open the session and run the command in it.
fn execute(command: &Command) -> std::result::Result<(), Failure> {
    let target = command.check().map_err(Failure::usage)?;
    let session = Session::open(&target, command.access())?;
    let result = command.call(&session, &target);
    session.close(&result);
    result
}

/// Say what failed, once: on stderr whatever RUST_LOG says, in the kernel log (unless the
/// command changes nothing), and with --json as a document on stdout.
fn report(failure: &Failure, json: bool) {
    let message = failure.to_string();
    eprintln!(
        "{}btrfs-rollback: error: {message}",
        logging::prefix(log::Level::Error)
    );
    logging::to_kmsg(log::Level::Error, &message);
    if json {
        print!("{}", failure.to_json().to_string_pretty());
    }
}

pub fn main() -> ExitCode {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // Dry runs and the read-only commands leave the kernel log alone.
    let changes = matches!(cli.command.access(), Access::Change { .. });
    logging::init(cli.verbose, changes);
    match execute(&cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(&failure, cli.command.json());
            ExitCode::from(failure.exit_status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_seed_layout() {
        let cli = Cli::try_parse_from(["btrfs-rollback", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.target.device, PathBuf::from("/dev/mapper/cryptroot"));
        assert_eq!(args.target.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(args.target.root, OsString::from("root"));
        assert_eq!(args.target.blank, OsString::from("root-blank"));
        assert_eq!(args.target.wait, 10);
        assert_eq!(args.log, PathBuf::from("rollback.log"));
        assert!(!args.dry_run);
    }

    #[test]
    fn defaults_come_from_the_configuration_and_flags_win() {
        let file =
            std::env::temp_dir().join(format!("btrfs-rollback-cli-{}.conf", std::process::id()));
        std::fs::write(
            &file,
            "device = /dev/vdb\nroot = @\nblank = @blank\nlog = logs/r.log\nwait = 3\n\
             keep-old-roots = 5\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut args = vec!["btrfs-rollback", "--config", file.to_str().unwrap(), "run"];
            args.extend(extra);
            let cli = parse(args.into_iter().map(OsString::from).collect()).unwrap();
            let Command::Run(args) = cli.command else {
                panic!("not run")
            };
            args
        };
        let args = parse(&[]);
        assert_eq!(args.target.device, PathBuf::from("/dev/vdb"));
        assert_eq!(args.target.root, OsString::from("@"));
        assert_eq!(args.target.blank, OsString::from("@blank"));
        assert_eq!(args.target.wait, 3);
        assert_eq!(args.target.mountpoint, PathBuf::from("/mnt"));
        assert_eq!(args.log, PathBuf::from("logs/r.log"));
        assert_eq!(args.retention.keep_old_roots, Some(5));
        let args = parse(&["--device", "/dev/vdc", "--keep-old-roots", "2"]);
        assert_eq!(args.target.device, PathBuf::from("/dev/vdc"));
        assert_eq!(args.retention.keep_old_roots, Some(2));
        assert_eq!(args.target.root, OsString::from("@"));
        std::fs::remove_file(&file).unwrap();
        let missing = vec!["btrfs-rollback", "--config", "/nonexistent/b.conf", "list"];
        assert!(super::parse(missing.into_iter().map(OsString::from).collect()).is_err());
    }

    #[test]
    fn names_with_a_leading_dash_are_values() {
        let cli = Cli::try_parse_from(["btrfs-rollback", "list", "--root=-odd", "--blank", "-x"]);
        // `--blank -x` is refused by clap (looks like a flag); `--blank=-x` is the spelling.
        assert!(cli.is_err());
        let cli =
            Cli::try_parse_from(["btrfs-rollback", "list", "--root=-odd", "--blank=-x"]).unwrap();
        let Command::List(args) = cli.command else {
            panic!("not list")
        };
        assert_eq!(args.target.root, OsString::from("-odd"));
    }

    #[test]
    fn bad_names_are_usage_errors_before_anything_runs() {
        let cli = Cli::try_parse_from(["btrfs-rollback", "run", "--root", "a/b"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.target.target().is_err());
    }

    #[test]
    fn log_paths_may_not_climb() {
        for bad in [
            "../escape.log",
            "logs/../../x",
            "/run/../etc/passwd",
            ".",
            "",
        ] {
            assert!(check_log(std::path::Path::new(bad)).is_err(), "{bad:?}");
        }
        for ok in [
            "rollback.log",
            "logs/rollback.log",
            "/run/btrfs-rollback.log",
        ] {
            assert!(check_log(std::path::Path::new(ok)).is_ok(), "{ok:?}");
        }
        let cli = Cli::try_parse_from(["btrfs-rollback", "restore", "--log", "x.log", "NAME"]);
        let Command::Restore(args) = cli.unwrap().command else {
            panic!("not restore")
        };
        assert_eq!(args.log, PathBuf::from("x.log"));
    }

    /// Every help text fits an 80-column console (issue 12), and each subcommand has examples.
    #[test]
    fn help_fits_80_columns_with_examples() {
        let mut cmd = command();
        cmd.build();
        let mut helps = vec![("btrfs-rollback".to_owned(), cmd.clone())];
        helps.extend(
            cmd.get_subcommands()
                .filter(|s| s.get_name() != "help")
                .map(|s| (s.get_name().to_owned(), s.clone())),
        );
        for (name, mut c) in helps {
            // The man page shows these lines as they are, 7 columns in, less their 2.
            for line in c
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default()
                .lines()
            {
                assert!(line.chars().count() <= 75, "{name}: {line:?}");
            }
            for help in [
                c.render_help().to_string(),
                c.render_long_help().to_string(),
            ] {
                for line in help.lines() {
                    assert!(line.chars().count() <= 80, "{name}: {line:?}");
                }
                if name != "btrfs-rollback" {
                    assert!(help.contains("Examples:"), "{name} has no examples");
                }
            }
        }
        // The exit-status text covers every subcommand, the coming ones included.
        for sub in ["run", "list", "diff", "restore", "forget", "log"] {
            let named = EXIT_STATUS_HELP
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == sub);
            assert!(named, "the exit status text leaves out {sub}");
        }
    }

    /// A bad value names its option, negative numbers included; zero days are refused.
    #[test]
    fn option_errors_name_the_option() {
        for (args, option) in [
            (&["list", "--wait", "-1"][..], "--wait"),
            (&["list", "--wait", "abc"], "--wait"),
            (&["run", "--keep-days", "0"], "--keep-days"),
            (&["run", "--keep-days", "-2"], "--keep-days"),
            (&["run", "--keep-old-roots", "0"], "--keep-old-roots"),
        ] {
            let e =
                Cli::try_parse_from(std::iter::once("btrfs-rollback").chain(args.iter().copied()))
                    .unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains(option), "{args:?}: {e}");
        }
    }
}
