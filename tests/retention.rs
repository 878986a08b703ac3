//! Privileged tests of old roots (`--keep-old-roots`, `--keep-days`), `restore`, and the JSON
//! of `list` and `run --dry-run`, on real btrfs, checked with btrfs-progs and a fresh mount.

#[macro_use]
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// The JSON document `text` re-dumped by python3 (`python_json`) in a canonical form that the
/// test can search.
fn json_canonical(text: &[u8]) -> String {
    python_json(text, "json.dumps(d, sort_keys=True)")
}

/// `restore` the old root at `path` (`old_roots/NAME`) by its NAME.
fn restore(disk: &Disk, path: &Path) -> std::process::Output {
    disk.output("restore", [path.file_name().unwrap()])
}

#[test]
fn privileged_old_roots_are_kept_with_their_nested_subvolumes_and_pruned() {
    let (disk, before) = fixture!("keep");
    let root_id = disk.mount().id("root");

    assert_says(
        &disk.run(&["--keep-old-roots", "2"]),
        0,
        &["kept the old root"],
    );
    let kept = old_roots(&disk);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].1, root_id, "the old root was not moved whole");
    {
        let m = disk.mount();
        let old = &kept[0].0;
        // Its nested subvolumes came along, content intact.
        assert_eq!(
            fs::read_to_string(m.join(old).join("var/lib/machines/a/b/c/data")).unwrap(),
            "deep"
        );
        assert!(m.join(old).join("etc/junk").exists());
        assert!(m.is_ro(old.join("srv")));
        // The fresh root is what the blank holds; siblings untouched.
        assert_eq!(m.tree("root"), before.blank_tree);
        for (path, (id, _)) in &before.siblings {
            assert_eq!(m.subvolumes().get(path), Some(id), "{path:?}");
        }
    }

    // Two more boots: each keeps one, and only the newest two survive.
    for _ in 0..2 {
        fs::write(disk.mount().join("root/etc/junk"), "again").unwrap();
        assert_exit(&disk.run(&["--keep-old-roots", "2"]), 0);
    }
    let kept = old_roots(&disk);
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter().all(|(_, id)| *id != root_id),
        "the oldest was not pruned: {kept:?}"
    );
    // Names never collide, even with three old roots created in the same second.
    let names: Vec<_> = kept.iter().map(|(p, _)| p.clone()).collect();
    assert_ne!(names[0], names[1]);
    // No nested subvolume of a pruned root is left behind.
    let m = disk.mount();
    let orphans: Vec<_> = m
        .subvolumes()
        .into_keys()
        .filter(|p| p.starts_with("old_roots") && !names.iter().any(|n| p.starts_with(n)))
        .collect();
    assert!(orphans.is_empty(), "{orphans:?}");
}

#[test]
fn privileged_keep_days_zero_is_refused_and_one_keeps_the_newest() {
    let disk = layout!("keepdays");
    // 0 days would prune every old root but the newest: a usage error, nothing changed.
    let subs = disk.mount().subvolumes();
    assert_says(&disk.run(&["--keep-days", "0"]), 2, &["--keep-days"]);
    assert_eq!(disk.mount().subvolumes(), subs);
    for _ in 0..3 {
        fs::write(disk.mount().join("root/etc/junk"), "boot").unwrap();
        assert_exit(&disk.run(&["--keep-days", "1"]), 0);
    }
    // Every old root is younger than a day: all kept.
    assert_eq!(old_roots(&disk).len(), 3);
}

#[test]
fn privileged_old_roots_that_is_a_file_is_refused_with_retention() {
    let disk = layout!("keepfile");
    fs::write(disk.mount().join("old_roots"), "not a directory").unwrap();
    let subs = disk.mount().subvolumes();
    assert_says(&disk.run(&["--keep-old-roots", "3"]), 1, &["\"old_roots\""]);
    assert_eq!(disk.mount().subvolumes(), subs);
}

#[test]
fn privileged_restore_brings_an_old_root_back_for_one_boot() {
    let (disk, before) = fixture!("restore");
    let first = disk.mount().id("root");
    assert_exit(&disk.run(&["--keep-old-roots", "5"]), 0);
    let (name, id) = old_roots(&disk).remove(0);
    assert_eq!(id, first);
    fs::write(disk.mount().join("root/etc/since"), "written after").unwrap();
    let replaced = disk.mount().id("root");

    // Unknown names are refused, nothing changed.
    let subs = disk.mount().subvolumes();
    assert_says(
        &disk.output("restore", ["no-such-root"]),
        1,
        &["no old root"],
    );
    assert_exit(&disk.output("restore", ["../root-blank"]), 2);
    assert_eq!(disk.mount().subvolumes(), subs);

    assert_exit(&restore(&disk, &name), 0);
    {
        let m = disk.mount();
        assert_eq!(m.id("root"), first, "root is not the restored one");
        assert!(m.join("root/etc/junk").exists());
        // The replaced root is kept as an old root, with what was written to it.
        let kept = old_roots(&disk);
        let (path, _) = kept.iter().find(|(_, id)| *id == replaced).expect("kept");
        assert_eq!(
            fs::read_to_string(m.join(path).join("etc/since")).unwrap(),
            "written after"
        );
    }
    // The next run keeps the restored root once...
    assert_says(&disk.run(&["--keep-old-roots", "5"]), 0, &["this once"]);
    assert_eq!(disk.mount().id("root"), first);
    // ...and the one after rolls back again.
    assert_exit(&disk.run(&["--keep-old-roots", "5"]), 0);
    let m = disk.mount();
    assert_ne!(m.id("root"), first);
    assert_eq!(m.tree("root"), before.blank_tree);
}

#[test]
fn privileged_list_and_dry_run_speak_json() {
    let disk = layout!("json");
    assert_exit(&disk.run(&["--keep-old-roots", "3"]), 0);
    {
        let m = disk.mount();
        m.subvol("root/new\nline \"quoted\"");
    }
    let subs = disk.mount().subvolumes();
    let out = disk.output("list", ["--json"]);
    assert_exit(&out, 0);
    let list = json_canonical(&out.stdout);
    for key in [
        "\"top_level\"",
        "\"old_roots\"",
        "\"age_seconds\"",
        "\"plan\"",
        "\"action\": \"swap\"",
        "\"path\": \"root/new\\nline \\\"quoted\\\"\"",
    ] {
        assert!(list.contains(key), "{key} missing from {list}");
    }
    let out = disk.run(&["--dry-run", "--json"]);
    assert_exit(&out, 0);
    let plan = json_canonical(&out.stdout);
    assert!(plan.contains("\"action\": \"delete_old\""), "{plan}");
    assert_eq!(
        disk.mount().subvolumes(),
        subs,
        "list or dry run changed something"
    );
    // --json without --dry-run is a usage error.
    assert_exit(&disk.run(&["--json"]), 2);
}

/// Only what btrfs-rollback retired (its mark, its name format) is pruned: a backup the admin
/// put in old_roots/, and a subvolume named like ours but without the mark, stay.
#[test]
fn privileged_retention_prunes_only_what_it_kept() {
    let disk = layout!("notours");
    {
        let m = disk.mount();
        fs::create_dir(m.join("old_roots")).unwrap();
        m.subvol("old_roots/my-backup");
        fs::write(m.join("old_roots/my-backup/precious"), "mine").unwrap();
        m.subvol("old_roots/2020-01-01_00-00-00");
    }
    for _ in 0..3 {
        fs::write(disk.mount().join("root/etc/junk"), "boot").unwrap();
        assert_exit(&disk.run(&["--keep-old-roots", "1", "--keep-days", "1"]), 0);
    }
    let kept: Vec<PathBuf> = old_roots(&disk).into_iter().map(|(p, _)| p).collect();
    assert!(
        kept.contains(&PathBuf::from("old_roots/my-backup")),
        "{kept:?}"
    );
    assert!(
        kept.contains(&PathBuf::from("old_roots/2020-01-01_00-00-00")),
        "{kept:?}"
    );
    // Plus the one most recently retired.
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert_eq!(
        fs::read_to_string(disk.mount().join("old_roots/my-backup/precious")).unwrap(),
        "mine"
    );
    let text = stdout(&disk.output("list", ["--keep-old-roots", "1"]));
    assert!(
        text.contains("\"my-backup\"") && text.contains("never pruned: not put here"),
        "{text}"
    );
    assert!(text.contains("kept: the most recently used"), "{text}");
}

/// The scenario: restore an old root, boot it (kept once), work in it; the next run
/// with retention keeps it as the most recently used and prunes one the user had left behind.
#[test]
fn privileged_a_restored_root_is_not_pruned_first() {
    let disk = layout!("restoreprune");
    let keep = ["--keep-old-roots", "2"];
    let first = disk.mount().id("root");
    assert_exit(&disk.run(&keep), 0);
    fs::write(disk.mount().join("root/etc/junk"), "second boot").unwrap();
    let second = disk.mount().id("root");
    assert_exit(&disk.run(&keep), 0);
    fs::write(disk.mount().join("root/etc/junk"), "third boot").unwrap();
    let third = disk.mount().id("root");
    let (name, id) = old_roots(&disk)
        .into_iter()
        .find(|(_, id)| *id == first)
        .unwrap();
    assert_eq!(id, first);
    assert_exit(&restore(&disk, &name), 0);
    assert_exit(&disk.run(&keep), 0); // kept once: the restored root boots
    fs::write(disk.mount().join("root/etc/junk"), "worked in it").unwrap();
    let out = disk.run(&keep);
    assert_exit(&out, 0);
    let ids: Vec<u64> = old_roots(&disk).into_iter().map(|(_, id)| id).collect();
    assert!(
        ids.contains(&first),
        "the restored root was pruned: {ids:?}"
    );
    assert!(
        ids.contains(&third),
        "the root replaced by restore: {ids:?}"
    );
    assert!(
        !ids.contains(&second),
        "the left-behind root stayed: {ids:?}"
    );
    let (path, _) = old_roots(&disk)
        .into_iter()
        .find(|(_, id)| *id == first)
        .unwrap();
    assert_eq!(
        fs::read_to_string(disk.mount().join(path).join("etc/junk")).unwrap(),
        "worked in it"
    );
}

/// A root that never served (two runs with no boot in between) is only a copy of the blank:
/// it is deleted, not kept, and does not push out the root that did serve.
#[test]
fn privileged_a_root_that_never_booted_is_not_kept() {
    let disk = layout!("neverbooted");
    let served = disk.mount().id("root");
    assert_exit(&disk.run(&["--keep-old-roots", "1"]), 0);
    let out = disk.run(&["--keep-old-roots", "1"]);
    assert_exit(&out, 0);
    let ids: Vec<u64> = old_roots(&disk).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, vec![served], "{}", stderr(&out));
}

/// The boot that keeps a restored root once still deletes leftovers of earlier runs (it used
/// to stop at the restored root and exit 0 with them on the disk).
#[test]
fn privileged_keeping_a_restored_root_still_removes_leftovers() {
    let disk = layout!("restore-leftover");
    assert_exit(&disk.run(&["--keep-old-roots", "3"]), 0);
    let (name, first) = old_roots(&disk).remove(0);
    assert_exit(&restore(&disk, &name), 0);
    let leftover = {
        let m = disk.mount();
        m.subvol("stray");
        fs::write(m.join("stray/secret"), "leftover-secret").unwrap();
        let name = format!("root.btrfs-rollback-tmp.{}", m.id("stray"));
        fs::rename(m.join("stray"), m.join(&name)).unwrap();
        name
    };
    let err = assert_says(&disk.run(&[]), 0, &["this once"]);
    let m = disk.mount();
    assert_eq!(m.id("root"), first);
    assert!(!m.join(&leftover).exists(), "{err}");
}

/// `list --keep-old-roots N` agrees with `run --dry-run`: the root the next run keeps counts
/// as the newest, so with N = 1 the one already kept is next to go.
#[test]
fn privileged_list_verdicts_agree_with_the_plan() {
    let disk = layout!("list-verdicts");
    assert_exit(&disk.run(&["--keep-old-roots", "1"]), 0);
    fs::write(disk.mount().join("root/etc/new-file"), "served").unwrap();
    let out = disk.output("list", ["--keep-old-roots", "1"]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("to be pruned"), "{text}");
    let plan = stdout(&disk.run(&["--dry-run", "--keep-old-roots", "1"]));
    assert!(plan.contains("prune the old root"), "{plan}");
}
