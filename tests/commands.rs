//! Privileged tests of the commands around old roots and the log (`forget`, `restore
//! --dry-run`, `log`) and of how every command fails (the JSON error document, the disk state
//! words, errors whatever RUST_LOG says, a user who is not root), on real btrfs, checked with
//! btrfs-progs and a fresh mount.

#[macro_use]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `python_json`'s `repr` of `expr` on the document `text`: what the test compares.
fn json_eval(text: &[u8], expr: &str) -> String {
    python_json(text, &format!("repr(({expr}))"))
}

fn log_text(disk: &Disk) -> String {
    fs::read_to_string(disk.mount().join("rollback.log")).unwrap_or_default()
}

/// Keep one old root on a disk with the impermanence layout (its root, with nested
/// subvolumes three deep and a read-only one with a child). Returns its name and id.
fn keep_an_old_root(disk: &Disk) -> (String, u64) {
    assert_exit(&disk.run(&["--keep-old-roots", "5"]), 0);
    let (path, id) = old_roots(disk).remove(0);
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    (name, id)
}

#[test]
fn privileged_forget_deletes_an_old_root_with_everything_nested() {
    let disk = layout!("forget");
    let (name, id) = keep_an_old_root(&disk);
    let old = Path::new("old_roots").join(&name);
    let subs = disk.mount().subvolumes();
    let nested: Vec<(PathBuf, u64)> = subs
        .iter()
        .filter(|(p, _)| p.starts_with(&old) && **p != old)
        .map(|(p, i)| (p.clone(), *i))
        .collect();
    assert_eq!(nested.len(), 6, "{subs:?}");

    // A dry run names every subvolume by path and id, and changes nothing.
    let log_before = log_text(&disk);
    let out = disk.output("forget", ["--dry-run", &name]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("dry run, nothing changed"), "{text}");
    for (path, nid) in nested.iter().chain([&(old.clone(), id)]) {
        let line = format!("ID {nid:<6} {:?}", path.to_str().unwrap());
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("with 6 nested subvolumes"), "{text}");
    let out = disk.output(
        "forget",
        ["--dry-run", "--json", &format!("old_roots/{name}")],
    );
    assert_exit(&out, 0);
    assert_eq!(
        json_eval(
            &out.stdout,
            "d['old_root']['path'], d['old_root']['id'], \
             sorted(n['id'] for n in d['old_root']['nested'])"
        ),
        format!("('old_roots/{name}', {id}, {:?})", {
            let mut ids: Vec<u64> = nested.iter().map(|(_, i)| *i).collect();
            ids.sort();
            ids
        })
    );
    assert_eq!(
        disk.mount().subvolumes(),
        subs,
        "a dry run changed something"
    );
    assert_eq!(log_text(&disk), log_before, "a dry run wrote to the log");

    // The real thing: the old root and everything in it go, nothing else.
    let out = disk.output("forget", [&name]);
    assert_says(&out, 0, &["deleted the old root", "6 nested"]);
    assert_only_gone(&disk, &subs, &old);
    assert!(
        log_text(&disk).contains("deleted the old root"),
        "not in rollback.log"
    );
    // Forgetting it again: there is none.
    assert_says(&disk.output("forget", [&name]), 1, &["there is no"]);
}

#[test]
fn privileged_forget_refuses_what_is_not_an_old_root() {
    let disk = layout!("forgetno");
    let (name, _) = keep_an_old_root(&disk);
    {
        let m = disk.mount();
        fs::create_dir(m.join("old_roots/plain-dir")).unwrap();
    }
    let subs = disk.mount().subvolumes();
    for (arg, status, says) in [
        ("persist", 1, "\"old_roots/persist\""),
        (
            "plain-dir",
            1,
            "\"old_roots/plain-dir\" is a plain directory",
        ),
        ("../persist", 2, "contains '/'"),
        ("root", 1, "\"old_roots/root\""),
        ("", 2, "NAME is empty"),
    ] {
        let out = disk.output("forget", [arg]);
        assert_exit(&out, status);
        assert!(stderr(&out).contains(says), "{arg:?}: {}", stderr(&out));
        if status == 1 {
            assert_says(&out, 1, &["not an old root", "was not changed"]);
        }
    }
    // A blank or root named like the tool's own directory would put them under `forget`.
    for option in ["--blank", "--root"] {
        let out = disk.output("forget", [option, "old_roots", "persist"]);
        assert_says(&out, 2, &["keeps for itself"]);
    }
    // An old root in use on this system (the running system's root after a live restore).
    let m = disk.mount();
    let in_use = disk.mount_subvol(&format!("old_roots/{name}"), "in-use");
    let out = disk.output("forget", [&name]);
    drop(in_use);
    assert_says(&out, 1, &["is in use"]);
    assert_eq!(m.subvolumes(), subs, "a refusal changed something");
}

#[test]
fn privileged_restore_dry_run_changes_nothing() {
    let disk = layout!("restoredry");
    let (name, id) = keep_an_old_root(&disk);
    let root = disk.mount().id("root");
    let subs = disk.mount().subvolumes();
    let log_before = log_text(&disk);
    let out = disk.output("restore", ["--dry-run", &name]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("dry run, nothing changed"), "{text}");
    assert!(
        text.contains(&format!(
            "exchange \"old_roots/{name}\" (ID {id}) with \"root\" (ID {root})"
        )),
        "{text}"
    );
    assert!(text.contains("keep the replaced root"), "{text}");
    let out = disk.output("restore", ["--dry-run", "--json", &name]);
    assert_exit(&out, 0);
    assert_eq!(
        json_eval(
            &out.stdout,
            "d['old_root']['id'], d['root']['id'], \
             d['replaced']['path'].startswith('old_roots/')"
        ),
        format!("({id}, {root}, True)")
    );
    let m = disk.mount();
    assert_eq!(m.subvolumes(), subs, "a dry run changed something");
    assert!(
        !m.join("btrfs-rollback.restored").exists(),
        "marker written"
    );
    drop(m);
    assert_eq!(log_text(&disk), log_before, "a dry run wrote to the log");
    // A dry run of something refused is refused the same way.
    let out = disk.output("restore", ["--dry-run", "no-such-root"]);
    assert_says(&out, 1, &["no old root"]);
}

#[test]
fn privileged_log_prints_the_end_of_the_log() {
    let disk = layout!("logview");
    // No log yet.
    let out = disk.cmd("log").output().unwrap();
    assert_says(&out, 1, &["no log file"]);
    assert_exit(&disk.run(&[]), 0);
    let log = log_text(&disk);
    let out = disk.output("log", ["--lines", "3"]);
    assert_exit(&out, 0);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(stdout(&out), lines[lines.len() - 3..].join("\n") + "\n");
    assert!(!is_mounted(&disk.work_mountpoint()));
    // The rotated log comes first when the current one is short.
    {
        let m = disk.mount();
        fs::write(m.join("rollback.log.old"), "old 1\nold 2\n").unwrap();
        fs::write(m.join("rollback.log"), "new 1\n").unwrap();
    }
    let out = disk.output("log", ["--lines", "2"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "old 2\nnew 1\n");
    // --log names another file; a symbolic link is not followed.
    {
        let m = disk.mount();
        fs::create_dir(m.join("logs")).unwrap();
        fs::write(m.join("logs/other.log"), "elsewhere\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", m.join("link.log")).unwrap();
    }
    let out = disk.output("log", ["--log", "logs/other.log"]);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), "elsewhere\n");
    let out = disk.output("log", ["--log", "link.log"]);
    assert_says(&out, 1, &["symbolic link"]);
}

#[test]
fn privileged_errors_with_json_are_documents_with_the_disk_state() {
    let disk = layout!("jsonerr");
    let subs = disk.mount().subvolumes();
    let error = "d['error']['exit_status'], d['error']['disk'], len(d['error']['message']) > 0";
    // Refused by the plan: a missing blank.
    let out = disk.run(&["--dry-run", "--json", "--blank", "no-such-blank"]);
    assert_exit(&out, 1);
    assert_eq!(json_eval(&out.stdout, error), "(1, 'untouched', True)");
    assert_says(&out, 1, &["no-such-blank"]);
    // A device that is not there, for every command with --json.
    for args in [
        &["list", "--json"][..],
        &["diff", "--json"],
        &["run", "--dry-run", "--json"],
        &["forget", "--dry-run", "--json", "x"],
        &["restore", "--dry-run", "--json", "x"],
    ] {
        let out = bin_command()
            .args(args)
            .args(["--device", "/dev/no-such-disk", "--wait", "0"])
            .output()
            .unwrap();
        assert_exit(&out, 1);
        assert_eq!(
            json_eval(&out.stdout, error),
            "(1, 'untouched', True)",
            "{args:?}"
        );
        assert!(
            json_eval(&out.stdout, "d['error']['message']").contains("/dev/no-such-disk"),
            "{args:?}"
        );
    }
    // A usage error found after parsing: exit status 2 in the document too.
    let out = disk.output("forget", ["--dry-run", "--json", "a/b"]);
    assert_exit(&out, 2);
    assert_eq!(json_eval(&out.stdout, error), "(2, 'untouched', True)");
    // Without --json, stdout stays empty.
    let out = disk.run(&["--blank", "no-such-blank"]);
    assert_exit(&out, 1);
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    assert_eq!(disk.mount().subvolumes(), subs);
}

#[test]
fn privileged_errors_reach_stderr_whatever_rust_log_says() {
    let disk = layout!("rustlog");
    let out = disk
        .cmd("run")
        .args(["--blank", "no-such-blank"])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("error:") && err.contains("\"no-such-blank\" does not exist"),
        "{err}"
    );
    assert!(err.contains("was not changed"), "{err}");
    // Printed once.
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
}

#[test]
fn privileged_a_user_who_is_not_root_is_told_root_is_needed() {
    let disk = layout!("notroot");
    let dev = disk.dev.to_str().unwrap().to_string();
    let bin = bin();
    for sub in ["list", "run"] {
        let out = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(&bin)
            .args([sub, "--device", &dev, "--wait", "0"])
            .args(["--mountpoint", "/tmp/btrfs-rollback-not-root"])
            .env("BTRFS_ROLLBACK_CONFIG", "/dev/null")
            .output()
            .unwrap();
        assert_exit(&out, 1);
        let err = stderr(&out);
        assert!(err.contains("btrfs-rollback needs root"), "{sub}: {err}");
        assert!(err.contains(&dev), "{sub}: {err}");
        assert!(err.contains("nothing was changed"), "{sub}: {err}");
    }
}

#[test]
fn privileged_dry_runs_leave_the_kernel_log_alone() {
    let disk = layout!("kmsg");
    // A blank name no other test uses, to find this test's lines in the kernel log.
    let probe = format!("kmsg-probe-{}", std::process::id());
    let in_kmsg = || {
        let out = sh(&mut Command::new("dmesg"));
        out.contains(&probe)
    };
    assert_exit(&disk.run(&["--dry-run", "--blank", &probe]), 1);
    assert_exit(&disk.output("list", ["--blank", &probe]), 0);
    assert!(!in_kmsg(), "a dry run or list wrote to the kernel log");
    // The control: a real run (refused: there is no such blank) does write there.
    let out = disk.run(&["--blank", &probe]);
    assert_exit(&out, 1);
    assert!(in_kmsg(), "a real run wrote nothing to the kernel log");
}

/// Under systemd (stderr is the journal: `$JOURNAL_STREAM` names it) a run leaves the kernel
/// log alone, since journald reads that too and every line would be in the journal twice, and
/// starts each stderr line with its syslog priority for the journal ("<3>" an error). The
/// control: a `$JOURNAL_STREAM` that names another file changes nothing.
#[test]
fn privileged_stderr_to_the_journal_is_the_only_copy_and_carries_priorities() {
    use std::os::unix::fs::MetadataExt;
    let disk = layout!("journal");
    let run_with_stream = |probe: &str, names_stderr: bool| {
        let path = disk.dir.join(format!("{probe}.stderr"));
        let file = fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        let stream = if names_stderr {
            format!("{}:{}", meta.dev(), meta.ino())
        } else {
            format!("{}:{}", meta.dev(), meta.ino() + 1)
        };
        let out = disk
            .cmd("run")
            .args(["--blank", probe])
            .env("JOURNAL_STREAM", stream)
            .env_remove("RUST_LOG")
            .stderr(file)
            .output()
            .unwrap();
        assert_exit(&out, 1);
        let in_kmsg = sh(&mut Command::new("dmesg")).contains(probe);
        (fs::read_to_string(&path).unwrap(), in_kmsg)
    };
    let journal = format!("journal-probe-{}", std::process::id());
    let (err, in_kmsg) = run_with_stream(&journal, true);
    assert!(
        !in_kmsg,
        "stderr is the journal, yet the run wrote to the kernel log:\n{err}"
    );
    assert!(err.contains("<6>btrfs-rollback: rolling back"), "{err}");
    assert!(err.contains("<3>btrfs-rollback: error: "), "{err}");
    assert!(err.lines().all(|l| l.starts_with('<')), "{err}");
    let other = format!("other-probe-{}", std::process::id());
    let (err, in_kmsg) = run_with_stream(&other, false);
    assert!(
        in_kmsg,
        "a run whose stderr is not the journal skipped the kernel log:\n{err}"
    );
    assert!(
        err.contains("\nbtrfs-rollback: error: ") || err.starts_with("btrfs-rollback: error: "),
        "{err}"
    );
    assert!(!err.contains("<3>"), "{err}");
}
