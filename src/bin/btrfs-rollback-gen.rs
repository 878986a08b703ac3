//! Build-time generator (feature `gen`): writes the man page and the shell completions of
//! btrfs-rollback, from the same clap definition the binary parses with, into a directory.
//! None of this is linked into the btrfs-rollback binary that goes into the initrd.
//!
//!   cargo run --features gen --bin btrfs-rollback-gen -- DIR
//!
//! writes DIR/btrfs-rollback.1 (one page: the command, then a section per subcommand),
//! DIR/btrfs-rollback.bash, DIR/_btrfs-rollback (zsh) and DIR/btrfs-rollback.fish.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap_complete::Shell;
use clap_mangen::Man;

const NAME: &str = "btrfs-rollback";

type Render = fn(&Man, &mut dyn Write) -> std::io::Result<()>;

/// The sections `render` draws, as roff text with each `.SH` heading renamed by `heading`.
fn sections(man: &Man, render: &[Render], heading: impl Fn(&str) -> String) -> Result<String> {
    let mut buf = Vec::new();
    for r in render {
        r(man, &mut buf)?;
    }
    let text = String::from_utf8(buf).context("the man page is not UTF-8")?;
    Ok(text
        .lines()
        .map(|line| match line.strip_prefix(".SH ") {
            Some(title) => heading(title.trim_matches('"')),
            None => line.to_owned(),
        })
        .map(|line| line + "\n")
        .collect())
}

/// One page for the command and every subcommand, so `man btrfs-rollback` shows it all:
/// the subcommands' SYNOPSIS, DESCRIPTION, OPTIONS and EXAMPLES (their after_help) become
/// subsections of a section per subcommand; the top level's after_help is EXIT STATUS.
fn man_page(cmd: &clap::Command) -> Result<String> {
    let man = Man::new(cmd.clone());
    let mut page = sections(
        &man,
        &[
            Man::render_title,
            Man::render_name_section,
            Man::render_synopsis_section,
            Man::render_description_section,
            Man::render_options_section,
        ],
        |t| format!(".SH \"{t}\""),
    )?;
    // clap_mangen's own list points to a page per subcommand; here they are sections below.
    let subs: Vec<_> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    page.push_str(".SH COMMANDS\n");
    for sub in &subs {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        page.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            sub.get_name(),
            roff_text(&about)
        ));
    }
    for sub in subs {
        let name = format!("{NAME} {}", sub.get_name());
        let sub = sub.clone().bin_name(name.clone());
        page.push_str(&format!(".SH \"{}\"\n", name.to_uppercase()));
        let sub = Man::new(sub);
        page.push_str(&sections(
            &sub,
            &[
                Man::render_synopsis_section,
                Man::render_description_section,
                Man::render_options_section,
            ],
            |t| format!(".SS \"{t}\""),
        )?);
        page.push_str(&preformatted(&sub, ".SS EXAMPLES")?);
    }
    page.push_str(&preformatted(&man, ".SH \"EXIT STATUS\"")?);
    page.push_str(&sections(&man, &[Man::render_version_section], |t| {
        format!(".SH \"{t}\"")
    })?);
    Ok(page)
}

/// The after_help text (examples, exit status) under `heading`, its lines kept as they are
/// (roff's no-fill mode, less the 2 columns of indentation the help has) and its own first
/// line ("Examples:") left to the heading.
fn preformatted(man: &Man, heading: &str) -> Result<String> {
    let text = sections(man, &[Man::render_extra_section], |_| String::new())?;
    let mut lines = text.lines().peekable();
    let mut out = format!("{heading}\n.nf\n");
    while let Some(line) = lines.next_if(|l| l.starts_with('.') || l.is_empty()) {
        out.push_str(line);
        out.push('\n');
    }
    lines.next_if(|l| l.ends_with(':'));
    for line in lines {
        out.push_str(line.strip_prefix("  ").unwrap_or(line));
        out.push('\n');
    }
    out.push_str(".fi\n");
    Ok(out)
}

/// Plain text as a roff text line: backslashes escaped, no control character at the start.
fn roff_text(text: &str) -> String {
    let text = text.replace('\\', "\\e");
    match text.starts_with(['.', '\'']) {
        true => format!("\\&{text}"),
        false => text,
    }
}

fn write(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    fill(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", path.display()))
}

fn generate(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let page = man_page(&btrfs_rollback::cli::command())?;
    write(&dir.join(format!("{NAME}.1")), |out| {
        out.write_all(page.as_bytes())
    })?;
    for (shell, file) in [
        (Shell::Bash, format!("{NAME}.bash")),
        (Shell::Zsh, format!("_{NAME}")),
        (Shell::Fish, format!("{NAME}.fish")),
    ] {
        let mut cmd = btrfs_rollback::cli::command();
        write(&dir.join(file), |out| {
            clap_complete::generate(shell, &mut cmd, NAME, out);
            Ok(())
        })?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: btrfs-rollback-gen DIR (writes the man page and completions there)");
        return ExitCode::from(2);
    };
    match generate(&PathBuf::from(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("btrfs-rollback-gen: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
