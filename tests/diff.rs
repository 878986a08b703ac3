//! Privileged tests of `btrfs-rollback diff`: the real binary on a real btrfs on a loop device.
//! Fixtures are built and checked with plain file operations and btrfs-progs, never with the
//! code under test. See `common/mod.rs` for when they skip.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

use common::*;

/// `root` with files, a read-only `root-blank` snapshot of it, `persist` with files.
fn blank_layout(disk: &Disk) {
    let m = disk.mount();
    m.subvol("root");
    let etc = m.join("root/etc");
    fs::create_dir_all(etc.join("gonedir/sub")).unwrap();
    for name in [
        "keep", "keep2", "modify", "grow", "touch", "chmod", "gone", "replace", "moveme",
    ] {
        fs::write(etc.join(name), format!("{name} from the blank\n")).unwrap();
    }
    fs::write(etc.join("gonedir/sub/a"), "a").unwrap();
    fs::write(etc.join("blank with space"), "untouched").unwrap();
    symlink("keep", etc.join("link")).unwrap();
    fs::create_dir_all(etc.join("other")).unwrap();
    fs::write(etc.join("twolinks"), "twolinks from the blank\n").unwrap();
    fs::hard_link(etc.join("twolinks"), etc.join("other/twolinks2")).unwrap();
    fs::create_dir_all(etc.join("movedir/sub")).unwrap();
    fs::write(etc.join("movedir/sub/deep"), "deep").unwrap();
    fs::create_dir_all(etc.join("wasdir")).unwrap();
    fs::write(etc.join("wasdir/x"), "x").unwrap();
    fs::write(etc.join("wasfile"), "a file").unwrap();
    fs::create_dir_all(m.join("root/usr/share/doc")).unwrap();
    fs::write(m.join("root/usr/share/doc/readme"), "docs").unwrap();
    fs::create_dir_all(m.join("root/var/lib")).unwrap();
    m.snapshot("root", "root-blank", true);
    m.subvol("persist");
    fs::create_dir_all(m.join("persist/etc")).unwrap();
    fs::write(m.join("persist/etc/kept"), "persisted").unwrap();
}

/// What a boot does to `root`: every kind of difference, and reads that are none.
fn change_root(m: &Mounted) {
    let etc = m.join("root/etc");
    // Reads (atime) and a second link of an unchanged file are not differences of the file.
    fs::read(etc.join("keep")).unwrap();
    fs::read(m.join("root/usr/share/doc/readme")).unwrap();
    fs::hard_link(etc.join("keep2"), etc.join("hardlink")).unwrap();
    fs::write(etc.join("added"), "new").unwrap();
    fs::write(etc.join("with space"), "new").unwrap();
    fs::write(etc.join("new\nline"), "new").unwrap();
    fs::write(etc.join(OsStr::from_bytes(b"bad\xff")), "not UTF-8").unwrap();
    // Same size, other bytes; and another size.
    fs::write(etc.join("modify"), "MODIFY from the blank\n").unwrap();
    fs::write(etc.join("grow"), "grow from the blank, and more\n").unwrap();
    sh(Command::new("touch")
        .args(["-d", "2001-02-03 04:05:06"])
        .arg(etc.join("touch")));
    fs::set_permissions(etc.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(etc.join("gone")).unwrap();
    fs::remove_dir_all(etc.join("gonedir")).unwrap();
    // Replaced by a new inode with the same content, as editors save.
    fs::write(etc.join("replace.tmp"), "replace from the blank\n").unwrap();
    fs::rename(etc.join("replace.tmp"), etc.join("replace")).unwrap();
    fs::rename(etc.join("moveme"), etc.join("moved")).unwrap();
    // A symlink replaced by a file.
    fs::remove_file(etc.join("link")).unwrap();
    fs::write(etc.join("link"), "now a file").unwrap();
    // Both links of a file changed through one.
    fs::write(etc.join("twolinks"), "TWOLINKS from the blank, longer\n").unwrap();
    // A directory of the blank moved: all it holds is new at its new place.
    fs::rename(etc.join("movedir"), etc.join("newplace")).unwrap();
    // Types changed both ways.
    fs::remove_dir_all(etc.join("wasdir")).unwrap();
    fs::write(etc.join("wasdir"), "now a file").unwrap();
    fs::remove_file(etc.join("wasfile")).unwrap();
    fs::create_dir(etc.join("wasfile")).unwrap();
    fs::write(etc.join("wasfile/inner"), "inner").unwrap();
    fs::create_dir_all(m.join("root/var/log")).unwrap();
    fs::write(m.join("root/var/log/new"), "log").unwrap();
    m.subvol("root/var/lib/machines");
    m.subvol("root/var/lib/machines/inner");
    fs::write(m.join("root/var/lib/machines/inner/file"), "inside").unwrap();
    m.subvol("root/var/lib/docker");
    fs::write(m.join("root/var/lib/docker/file"), "inside").unwrap();
}

/// The text `diff` prints after `change_root`.
const EXPECTED: &str = "\
+ /etc/added
+ \"/etc/bad\\xFF\"
* /etc/chmod (metadata only)
- /etc/gone
- /etc/gonedir
~ /etc/grow
+ /etc/hardlink
~ /etc/link (was a symbolic link)
~ /etc/modify
+ /etc/moved
- /etc/movedir
- /etc/moveme
+ \"/etc/new\\nline\"
+ /etc/newplace
+ /etc/newplace/sub
+ /etc/newplace/sub/deep
~ /etc/other/twolinks2
* /etc/replace (metadata only)
* /etc/touch (metadata only)
~ /etc/twolinks
~ /etc/wasdir (was a directory)
~ /etc/wasfile (was a file)
+ /etc/wasfile/inner
+ \"/etc/with space\"
@ /var/lib/docker (subvolume, erased whole)
@ /var/lib/machines (subvolume, erased whole with 1 nested)
+ /var/log
+ /var/log/new
12 new, 7 changed, 3 metadata only, 4 gone, 2 subvolumes
";

/// What `diff` prints when root is the same as the blank.
const NOTHING: &str = "0 new, 0 changed, 0 metadata only, 0 gone, 0 subvolumes\n";

fn diff(disk: &Disk, extra: &[&str]) -> Output {
    disk.output("diff", extra)
}

/// What `diff` must never change: subvolumes, the log, the trees of root and the blank.
fn snapshot_state(disk: &Disk) -> (BTreeMap<PathBuf, u64>, Option<u64>, Vec<String>) {
    let m = disk.mount();
    let log = fs::metadata(m.join("rollback.log")).ok().map(|m| m.len());
    let trees = ["root", "root-blank", "persist"]
        .iter()
        .map(|s| format!("{:?}", m.tree(s)))
        .collect();
    (m.subvolumes(), log, trees)
}

/// `diff` exits 0 and prints `expected`.
fn assert_diff(disk: &Disk, extra: &[&str], expected: &str) -> Output {
    let out = diff(disk, extra);
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), expected, "stderr:\n{}", stderr(&out));
    out
}

/// With root a snapshot of the blank: `diff` finds nothing; after `change_root`, it reports
/// `EXPECTED` by the fast way (not comparing every file) and changes nothing.
fn assert_nothing_then_every_change(disk: &Disk) {
    assert_diff(disk, &[], NOTHING);
    change_root(&disk.mount());
    let before = snapshot_state(disk);
    let out = assert_diff(disk, &[], EXPECTED);
    assert!(
        !stderr(&out).contains("comparing every file"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot_state(disk), before, "diff changed something");
}

#[test]
fn privileged_diff_reports_what_a_rollback_erases() {
    privileged!();
    let disk = Disk::new("diff");
    blank_layout(&disk);

    // Nothing changed yet: nothing to report. Then the first boot: root is the original, the
    // blank a snapshot of it.
    assert_nothing_then_every_change(&disk);

    // Excludes: a directory covers what is in it; `*` within a name, `**` across names;
    // patterns without a leading `/` match at any depth.
    let out = diff(
        &disk,
        &[
            "--exclude",
            "/var/log",
            "--exclude",
            "/etc/gone*",
            "--exclude=/var/**/docker",
            "--exclude",
            "*space",
            "--exclude",
            "new?line",
        ],
    );
    assert_exit(&out, 0);
    let text = stdout(&out);
    for gone in [
        "/var/log",
        "/etc/gone",
        "/etc/gonedir",
        "/var/lib/docker",
        "with space",
    ] {
        let listed = text
            .lines()
            .filter(|l| !l.contains("excluded by --exclude"));
        assert!(
            !listed.collect::<String>().contains(gone),
            "{gone} not excluded:\n{text}"
        );
    }
    // `?` is not a wildcard: the newline name stays.
    assert!(text.contains("+ \"/etc/new\\nline\"\n"), "{text}");
    assert!(text.contains("@ /var/lib/machines"), "{text}");
    // What each pattern left out follows the summary.
    assert!(
        text.ends_with(
            "9 new, 7 changed, 3 metadata only, 2 gone, 1 subvolume\n\
             2 paths excluded by --exclude \"/var/log\"\n\
             2 paths excluded by --exclude \"/etc/gone*\"\n\
             1 path excluded by --exclude \"/var/**/docker\"\n\
             1 path excluded by --exclude \"*space\"\n\
             0 paths excluded by --exclude \"new?line\"\n"
        ),
        "{text}"
    );
    // Everything excluded: nothing listed, and said so.
    let all_out = format!("{NOTHING}28 paths excluded by --exclude \"*\"\n");
    assert_diff(&disk, &["--exclude", "*"], &all_out);

    // JSON: parses, and says the same.
    let out = diff(&disk, &["--json"]);
    assert_exit(&out, 0);
    let json: Value = serde_json::from_str(&stdout(&out)).expect("diff --json is JSON");
    assert_eq!(json["root"]["path"], "root");
    assert_eq!(json["blank"]["path"], "root-blank");
    assert!(json["since_transid"].is_u64(), "{json}");
    let entries = json["entries"].as_array().unwrap();
    let lines: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["change"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
                e["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            "new file /etc/added",
            "new file /etc/bad\u{fffd}",
            "metadata file /etc/chmod",
            "gone file /etc/gone",
            "gone dir /etc/gonedir",
            "changed file /etc/grow",
            "new file /etc/hardlink",
            "changed file /etc/link",
            "changed file /etc/modify",
            "new file /etc/moved",
            "gone dir /etc/movedir",
            "gone file /etc/moveme",
            "new file /etc/new\nline",
            "new dir /etc/newplace",
            "new dir /etc/newplace/sub",
            "new file /etc/newplace/sub/deep",
            "changed file /etc/other/twolinks2",
            "metadata file /etc/replace",
            "metadata file /etc/touch",
            "changed file /etc/twolinks",
            "changed file /etc/wasdir",
            "changed dir /etc/wasfile",
            "new file /etc/wasfile/inner",
            "new file /etc/with space",
            "subvolume dir /var/lib/docker",
            "subvolume dir /var/lib/machines",
            "new dir /var/log",
            "new file /var/log/new",
        ]
    );
    let entry = |path: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("no {path}"))
    };
    assert_eq!(entry("/etc/link")["was"], "symlink");
    assert_eq!(entry("/etc/wasfile")["was"], "file");
    let nested = entry("/var/lib/machines")["nested"].as_array().unwrap();
    assert_eq!(nested.len(), 1, "{json}");
    assert!(nested[0]["path"]
        .as_str()
        .unwrap()
        .starts_with("root/var/lib/machines/"));
    assert!(entry("/var/lib/docker")["id"].is_u64());
    assert_eq!(entry("/var/lib/docker")["nested"], Value::Array(vec![]));
    let summary = &json["summary"];
    for (key, n) in [
        ("new", 12),
        ("changed", 7),
        ("metadata", 3),
        ("gone", 4),
        ("subvolumes", 2),
    ] {
        assert_eq!(summary[key], n, "{key}");
    }

    // A blank that is no snapshot of root (a copy): every file compared, the same answer.
    {
        let m = disk.mount();
        m.subvol("copy");
        sh(Command::new("cp")
            .arg("-a")
            .arg(m.join("root-blank/."))
            .arg(m.join("copy")));
    }
    let out = assert_diff(&disk, &["--blank", "copy"], EXPECTED);
    assert_says(&out, 0, &["not snapshots of one another"]);

    // After a rollback root is a snapshot of the blank: nothing, then the same changes again.
    assert_exit(&disk.run(&[]), 0);
    assert_nothing_then_every_change(&disk);
}

#[test]
fn privileged_diff_sees_a_running_system() {
    privileged!();
    let disk = Disk::new("diff-live");
    blank_layout(&disk);
    // Root stays mounted read-write, as `/` of a running system, while diff looks.
    let m = disk.mount();
    fs::write(m.join("root/etc/live"), "not committed yet").unwrap();
    fs::write(m.join("root/etc/modify"), "MODIFY from the blank\n").unwrap();
    assert_diff(
        &disk,
        &[],
        "+ /etc/live\n~ /etc/modify\n1 new, 1 changed, 0 metadata only, 0 gone, 0 subvolumes\n",
    );
    assert_eq!(
        fs::read(m.join("root/etc/live")).unwrap(),
        b"not committed yet"
    );
}

#[test]
fn privileged_diff_without_blank_or_root_is_a_clear_error() {
    privileged!();
    let disk = Disk::new("diff-missing");
    blank_layout(&disk);
    let state = || {
        let m = disk.mount();
        let log = fs::metadata(m.join("rollback.log")).ok().map(|m| m.len());
        (m.subvolumes(), log)
    };
    let before = state();
    let out = diff(&disk, &["--blank", "no-blank"]);
    let dev = disk.dev.to_string_lossy();
    assert_says(&out, 1, &["\"no-blank\" does not exist", &dev]);
    assert!(out.stdout.is_empty());
    let out = diff(&disk, &["--root", "no-root"]);
    assert_says(&out, 1, &["\"no-root\" does not exist"]);
    // NAME must be an old root: the error names the path it looked at.
    let out = diff(&disk, &["nosuch"]);
    assert_says(&out, 1, &["\"old_roots/nosuch\" is not an old root"]);
    fs::create_dir(disk.mount().join("old_roots")).unwrap();
    let out = diff(&disk, &["nosuch"]);
    let says = "\"old_roots/nosuch\" is not an old root: it does not exist";
    assert_says(&out, 1, &[says]);
    fs::create_dir(disk.mount().join("old_roots/plain")).unwrap();
    assert_says(&diff(&disk, &["plain"]), 1, &["not a subvolume"]);
    // A NAME that is a path is a usage error, as for restore and forget.
    assert_says(&diff(&disk, &["../root"]), 2, &["NAME"]);
    // An empty pattern is a usage error that names the option.
    for empty in ["", "/"] {
        assert_says(&diff(&disk, &["--exclude", empty]), 2, &["--exclude"]);
    }
    // The real blank deleted.
    {
        let m = disk.mount();
        btrfs([
            Path::new("subvolume"),
            Path::new("delete"),
            &m.join("root-blank"),
        ]);
    }
    assert_says(&diff(&disk, &[]), 1, &["\"root-blank\" does not exist"]);
    // Not a subvolume.
    {
        let m = disk.mount();
        fs::create_dir(m.join("plain")).unwrap();
    }
    assert_says(&diff(&disk, &["--blank", "plain"]), 1, &["not a subvolume"]);
    let after = state();
    assert_eq!(after.0.len() + 1, before.0.len(), "{after:?}");
    assert_eq!(after.1, before.1);
}

#[test]
fn privileged_diff_of_200000_files_reports_only_the_changed() {
    privileged!();
    let disk = Disk::new("diff-200k");
    {
        let m = disk.mount();
        m.subvol("root");
        let start = Instant::now();
        for d in 0..200 {
            let dir = m.join(format!("root/data/d{d:03}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..1000 {
                fs::write(dir.join(format!("f{f:04}")), format!("{d} {f}\n")).unwrap();
            }
        }
        m.snapshot("root", "root-blank", true);
        eprintln!(
            "created 200,000 files and the blank in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    let start = Instant::now();
    let out = diff(&disk, &[]);
    eprintln!(
        "diff of 200,000 unchanged files: {:.3} s",
        start.elapsed().as_secs_f64()
    );
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), NOTHING);
    {
        let m = disk.mount();
        fs::write(m.join("root/data/d000/f0000"), "0 X\n").unwrap();
        fs::write(m.join("root/data/d099/f0500"), "changed, longer\n").unwrap();
        fs::remove_file(m.join("root/data/d150/f0999")).unwrap();
        fs::write(m.join("root/data/d199/new"), "new").unwrap();
        fs::write(m.join("root/new"), "new").unwrap();
        fs::set_permissions(
            m.join("root/data/d042/f0042"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        // Reading many files must not matter.
        for f in 0..1000 {
            fs::read(m.join(format!("root/data/d123/f{f:04}"))).unwrap();
        }
    }
    let start = Instant::now();
    let out = diff(&disk, &[]);
    eprintln!(
        "diff of 200,000 files, 6 changed: {:.3} s",
        start.elapsed().as_secs_f64()
    );
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        "~ /data/d000/f0000\n* /data/d042/f0042 (metadata only)\n~ /data/d099/f0500\n\
         - /data/d150/f0999\n+ /data/d199/new\n+ /new\n\
         2 new, 2 changed, 1 metadata only, 1 gone, 0 subvolumes\n",
        "stderr:\n{}",
        stderr(&out)
    );
}

#[test]
fn privileged_diff_of_a_blank_changed_after_root_was_made() {
    privileged!();
    let disk = Disk::new("diff-late-blank");
    blank_layout(&disk);
    assert_exit(&disk.run(&[]), 0);
    {
        let m = disk.mount();
        m.set_ro("root-blank", false);
        fs::write(m.join("root-blank/etc/late"), "added to the blank").unwrap();
        m.set_ro("root-blank", true);
    }
    let late = "- /etc/late\n0 new, 0 changed, 0 metadata only, 1 gone, 0 subvolumes\n";
    let out = assert_diff(&disk, &[], late);
    assert_says(&out, 0, &["was changed after"]);
}

#[test]
fn privileged_diff_of_an_old_root_after_later_runs_takes_the_fast_way() {
    privileged!();
    let disk = Disk::new("diff-old-after-runs");
    blank_layout(&disk);
    fs::write(disk.mount().join("root/etc/first"), "lost at the first run").unwrap();
    assert_exit(&disk.run(&["--keep-old-roots", "3"]), 0);
    // Each later run snapshots the blank again, which raises its generation, not its files.
    // (A root that never served is not kept: each one gets a file.)
    for i in 0..2 {
        fs::write(disk.mount().join(format!("root/etc/later-{i}")), "served").unwrap();
        assert_exit(&disk.run(&["--keep-old-roots", "3"]), 0);
    }
    let m = disk.mount();
    let mut olds: Vec<_> = fs::read_dir(m.join("old_roots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    olds.sort();
    assert_eq!(olds.len(), 3, "{olds:?}");
    drop(m);
    // The oldest name sorts first only if the names were not made in one second: find the one
    // that holds the file.
    let hits: Vec<_> = olds
        .iter()
        .map(|name| {
            let out = diff(&disk, &[name]);
            assert_exit(&out, 0);
            assert!(
                !stderr(&out).contains("comparing every file"),
                "{name}: {}",
                stderr(&out)
            );
            stdout(&out).contains("+ /etc/first")
        })
        .collect();
    assert_eq!(hits.iter().filter(|h| **h).count(), 1, "{olds:?} {hits:?}");
}

#[test]
fn privileged_diff_of_a_file_with_many_links_in_one_directory() {
    privileged!();
    let disk = Disk::new("diff-links");
    {
        let m = disk.mount();
        m.subvol("root");
        fs::create_dir(m.join("root/many")).unwrap();
        let first = m.join("root/many").join(format!("{:0>200}", 0));
        fs::write(&first, "shared").unwrap();
        // 20 names of 200 bytes: one INODE_REF item of 4200 bytes, more than TREE_SEARCH's
        // 3992-byte buffer holds.
        for i in 1..20 {
            fs::hard_link(&first, m.join("root/many").join(format!("{i:0>200}"))).unwrap();
        }
        m.snapshot("root", "root-blank", true);
    }
    fs::write(
        disk.mount().join("root/many").join(format!("{:0>200}", 7)),
        "SHARED",
    )
    .unwrap();
    let out = diff(&disk, &[]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("{text}");
    // At least the name INO_LOOKUP gives (the item is too big to read by TREE_SEARCH v1);
    // nothing else.
    assert!(lines.len() >= 2, "{text}");
    for line in &lines[..lines.len() - 1] {
        assert!(line.starts_with("~ /many/0000"), "{text}");
    }
}
