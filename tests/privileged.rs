//! Privileged tests: the real binary on a real btrfs on a loop device, checked with btrfs-progs
//! and a fresh mount. See `common/mod.rs` for when they skip.

#[macro_use]
mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn privileged_rolls_back_an_impermanence_layout() {
    let (disk, before) = fixture!("layout");
    // 3-deep nesting plus a read-only subvolume with a child: 4 + 2 nested.
    let says = ["done: \"root\" is a fresh snapshot", "6 nested subvolumes"];
    assert_says(&disk.run(&[]), 0, &says);
    before.assert_rolled_back(&disk, "root", "root-blank");
    before.assert_log_grew(&disk);
    let m = disk.mount();
    let log = fs::read_to_string(m.join("rollback.log")).unwrap();
    // Lines logged before the log file could be opened are in the file too.
    assert!(
        log.contains("waiting") || log.contains("mounted the top-level volume"),
        "{log}"
    );
    assert!(log.contains("clearing the read-only flag"), "{log}");
    drop(m);

    // A second rollback on the fresh root works the same and appends to the log.
    assert_a_run_rolls_back(&disk).assert_log_grew(&disk);
}

#[test]
fn privileged_odd_names_inside_and_outside_root() {
    privileged!();
    let disk = Disk::new("names");
    let (root, blank) = ("my root ✓", "-blank\nsnapshot");
    {
        let m = disk.mount();
        m.subvol(root);
        fs::write(m.join(root).join("from-blank"), "b").unwrap();
        m.snapshot(root, blank, true);
        m.subvol("persist");
        for name in ["with space", "new\nline", "ünïcødé", "-dash", "a b/c d"] {
            if name.contains('/') {
                fs::create_dir_all(m.join(root).join("a b")).unwrap();
            }
            m.subvol(Path::new(root).join(name));
        }
    }
    let before = Before::take(&disk, root, blank);
    let out = disk.run(&["--root", root, &format!("--blank={blank}")]);
    assert_exit(&out, 0);
    before.assert_rolled_back(&disk, root, blank);
}

#[test]
fn privileged_confusable_siblings_are_untouched() {
    let disk = layout!("siblings");
    {
        let m = disk.mount();
        for name in ["root2", "root.old", "rootx", "root-blank2"] {
            m.subvol(name);
            fs::write(m.join(name).join("keep"), name).unwrap();
        }
        m.subvol("persist/root");
        fs::write(m.join("persist/root/keep"), "persist/root").unwrap();
        fs::create_dir(m.join("dir")).unwrap();
        m.subvol("dir/root");
        // Links in root that point into persist, absolute and relative.
        symlink(m.join("persist"), m.join("root/persist-link")).unwrap();
        symlink("../persist/etc", m.join("root/etc-link")).unwrap();
    }
    let before = Before::layout(&disk);
    assert!(before.siblings.len() >= 9, "{:?}", before.siblings.keys());
    assert_exit(&disk.run(&[]), 0);
    before.assert_rolled_back(&disk, "root", "root-blank");
}

#[test]
fn privileged_hundreds_of_nested_and_a_chain_of_100() {
    let disk = layout!("many");
    {
        let m = disk.mount();
        create_many(&m, "root/many", 300);
        let mut chain = String::from("root/chain");
        for i in 0..100 {
            chain.push_str(&format!("/{i}"));
            if i == 0 {
                fs::create_dir(m.join("root/chain")).unwrap();
            }
            m.subvol(&chain);
        }
    }
    let before = Before::layout(&disk);
    assert_says(&disk.run(&[]), 0, &["406 nested subvolumes"]);
    before.assert_rolled_back(&disk, "root", "root-blank");
}

/// Checks that a refusal left the disk exactly as it was.
fn assert_unchanged(disk: &Disk, before: &std::collections::BTreeMap<std::path::PathBuf, u64>) {
    let m = disk.mount();
    assert_eq!(&m.subvolumes(), before, "a refusal changed the subvolumes");
}

#[test]
fn privileged_missing_blank_changes_nothing() {
    let disk = layout!("noblank");
    let subs = disk.mount().subvolumes();
    let out = disk.run(&["--blank", "no-such-blank"]);
    assert_says(
        &out,
        1,
        &["\"no-such-blank\" does not exist", "was not changed"],
    );
    assert_unchanged(&disk, &subs);
    // The refusal is in the log file too.
    let log = fs::read_to_string(disk.mount().join("rollback.log")).unwrap();
    assert!(log.contains("refusing to roll back"), "{log}");
}

#[test]
fn privileged_blank_that_is_not_a_subvolume_changes_nothing() {
    let disk = layout!("blankdir");
    {
        let m = disk.mount();
        fs::create_dir(m.join("plain-dir")).unwrap();
        symlink("root-blank", m.join("blank-link")).unwrap();
    }
    let subs = disk.mount().subvolumes();
    for (blank, what) in [
        ("plain-dir", "plain directory"),
        ("blank-link", "symbolic link"),
    ] {
        assert_says(&disk.run(&["--blank", blank]), 1, &[what]);
        assert_unchanged(&disk, &subs);
    }
}

#[test]
fn privileged_root_that_is_not_a_subvolume_changes_nothing() {
    let disk = layout!("rootdir");
    fs::create_dir(disk.mount().join("plain-root")).unwrap();
    let subs = disk.mount().subvolumes();
    let out = disk.run(&["--root", "plain-root"]);
    assert_says(&out, 1, &["\"plain-root\" is a plain directory"]);
    assert_unchanged(&disk, &subs);
    assert!(disk.mount().join("plain-root").is_dir());
}

#[test]
fn privileged_missing_root_is_created_from_the_blank() {
    let (disk, before) = fixture!("noroot");
    {
        let m = disk.mount();
        // btrfs-progs 6.2 has no `delete -R`: children first, by hand.
        m.set_ro("root/srv", false);
        for sub in [
            "root/srv/child",
            "root/srv",
            "root/var/lib/machines/a/b/c",
            "root/var/lib/machines/a/b",
            "root/var/lib/machines/a",
            "root/var/lib/machines",
            "root",
        ] {
            btrfs([
                "subvolume".as_ref(),
                "delete".as_ref(),
                m.join(sub).as_os_str(),
            ]);
        }
        assert!(!m.join("root").exists());
    }
    assert_says(&disk.run(&[]), 0, &["was missing"]);
    before.assert_rolled_back(&disk, "root", "root-blank");
}

#[test]
fn privileged_missing_device_is_a_clear_error() {
    privileged!();
    let start = Instant::now();
    let out = bin_command()
        .args(["run", "--device", "/dev/no-such-disk", "--wait", "1"])
        .args(["--mountpoint", "/nonexistent-mountpoint"])
        .output()
        .unwrap();
    let says = [
        "/dev/no-such-disk did not appear within 1 s",
        "nothing was changed",
    ];
    assert_says(&out, 1, &says);
    assert!(start.elapsed() >= Duration::from_secs(1), "did not wait");
    assert!(!Path::new("/nonexistent-mountpoint").exists());
}

#[test]
fn privileged_device_that_appears_late_is_waited_for() {
    let (disk, before) = fixture!("late");
    let link = disk.dir.join("late-device");
    let child = bin_command()
        .args(["run", "--wait", "10", "--device"])
        .arg(&link)
        .arg("--mountpoint")
        .arg(disk.work_mountpoint())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(1500));
    symlink(&disk.dev, &link).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_says(&out, 0, &["appeared after"]);
    before.assert_rolled_back(&disk, "root", "root-blank");
}

#[test]
fn privileged_device_that_is_not_btrfs_is_refused() {
    privileged!();
    let ext4 = Disk::with_mkfs("ext4", &["mkfs.ext4", "-q", "-F"]);
    let dev = ext4.dev.display().to_string();
    assert_says(&ext4.run(&[]), 1, &["holds no btrfs filesystem", &dev]);
    let blank = Disk::with_mkfs("zeros", &[]);
    assert_exit(&blank.run(&[]), 1);
    // A regular file is not a block device.
    let out = bin_command()
        .args(["run", "--wait", "0", "--device"])
        .arg(&ext4.image)
        .output()
        .unwrap();
    assert_says(&out, 1, &["is not a block device"]);
}

#[test]
fn privileged_default_subvolume_follows_root() {
    let disk = layout!("default");
    {
        let m = disk.mount();
        btrfs([
            "subvolume".as_ref(),
            "set-default".as_ref(),
            m.join("root").as_os_str(),
        ]);
    }
    assert_a_run_rolls_back(&disk);
    assert_default_is_root(&disk);
    // A plain mount (no subvol option) now gives the fresh root.
    let plain = disk.dir.join("plain");
    fs::create_dir_all(&plain).unwrap();
    sh(Command::new("mount").arg(&disk.dev).arg(&plain));
    let fresh = plain.join("etc/machine-id.blank").exists() && !plain.join("etc/junk").exists();
    sh(Command::new("umount").arg(&plain));
    assert!(fresh, "the default subvolume is not the fresh root");
}

// A default subvolume nested in root: tests/erase.rs (it follows root now).

#[test]
fn privileged_quotas_enabled() {
    let disk = layout!("quota");
    {
        let m = disk.mount();
        btrfs(["quota".as_ref(), "enable".as_ref(), m.path.as_os_str()]);
        btrfs([
            "quota".as_ref(),
            "rescan".as_ref(),
            "-w".as_ref(),
            m.path.as_os_str(),
        ]);
    }
    assert_a_run_rolls_back(&disk);
}

#[test]
fn privileged_unwritable_log_does_not_stop_the_rollback() {
    let (disk, before) = fixture!("log");
    // A directory where the log file should be, then a path in a directory that does not exist.
    for log in ["persist", "/nonexistent-dir/rollback.log"] {
        assert_says(
            &disk.run(&["--log", log]),
            0,
            &["cannot write the log file"],
        );
        before.assert_rolled_back(&disk, "root", "root-blank");
    }
}

#[test]
fn privileged_log_file_is_capped() {
    let disk = layout!("logcap");
    fs::write(disk.mount().join("rollback.log"), vec![b'x'; 2 << 20]).unwrap();
    assert_exit(&disk.run(&[]), 0);
    let m = disk.mount();
    assert_eq!(
        fs::metadata(m.join("rollback.log.old")).unwrap().len(),
        2 << 20
    );
    assert!(fs::metadata(m.join("rollback.log")).unwrap().len() < 64 << 10);
}

#[test]
fn privileged_dry_run_and_list_change_nothing() {
    let disk = layout!("dry");
    let subs = disk.mount().subvolumes();
    let out = disk.run(&["--dry-run"]);
    assert_exit(&out, 0);
    let plan = stdout(&out);
    for nested in ["root/var/lib/machines/a/b/c", "root/srv/child", "root/srv"] {
        let id = subs[Path::new(nested)];
        assert!(
            plan.contains(&format!("\"{nested}\" (ID {id}")),
            "{nested} missing from the plan:\n{plan}"
        );
    }
    let out = disk.cmd("list").output().unwrap();
    assert_exit(&out, 0);
    let list = stdout(&out);
    assert!(list.contains("\"persist\""), "{list}");
    assert!(list.contains("blank \"root-blank\""), "{list}");
    assert!(list.contains("`run` would"), "{list}");
    assert!(!is_mounted(&disk.work_mountpoint()));
    assert_unchanged(&disk, &subs);
    assert!(!disk.mount().join("rollback.log").exists());
}

#[test]
fn privileged_leftover_of_an_interrupted_run_is_removed() {
    let (disk, before) = fixture!("leftover");
    {
        let m = disk.mount();
        m.subvol("root.btrfs-rollback-tmp");
        m.subvol("root.btrfs-rollback-tmp/x");
        m.subvol("root.btrfs-rollback-tmp/x/y");
        m.set_ro("root.btrfs-rollback-tmp/x", true);
    }
    assert_says(&disk.run(&[]), 0, &["left over from an interrupted run"]);
    before.assert_rolled_back(&disk, "root", "root-blank");
}

#[test]
fn privileged_temporary_name_taken_by_a_file_is_refused() {
    let disk = layout!("tmpfile");
    fs::write(disk.mount().join("root.btrfs-rollback-tmp"), "mine").unwrap();
    let subs = disk.mount().subvolumes();
    assert_says(&disk.run(&[]), 1, &["root.btrfs-rollback-tmp"]);
    assert_unchanged(&disk, &subs);
    assert_eq!(
        fs::read_to_string(disk.mount().join("root.btrfs-rollback-tmp")).unwrap(),
        "mine"
    );
}

#[test]
fn privileged_busy_mountpoint_is_refused() {
    let disk = layout!("busy");
    let subs = disk.mount().subvolumes();
    let mp = disk.work_mountpoint();
    fs::create_dir_all(&mp).unwrap();
    sh(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&mp));
    let out = disk.cmd("run").output().unwrap();
    sh(Command::new("umount").arg(&mp));
    assert_says(&out, 1, &["already mounted"]);
    assert_unchanged(&disk, &subs);
}

#[test]
fn privileged_bad_names_are_usage_errors() {
    let disk = layout!("usage");
    let subs = disk.mount().subvolumes();
    for args in [&["--root", "a/b"][..], &["--blank", ".."], &["--root", ""]] {
        let out = disk.run(args);
        assert_exit(&out, 2);
    }
    assert_unchanged(&disk, &subs);
}

/// SIGKILL the binary at many instants of a rollback with hundreds of nested subvolumes: at
/// every kill `root` must exist, and a rerun must converge with nothing left over. Each round
/// starts from the same state (a fresh root plus 300 nested), the kills spread over the time
/// an uncut rollback of that state takes.
#[test]
fn privileged_sigkill_at_any_instant_keeps_root() {
    let disk = layout!("kill");
    let rounds = kill_rounds(16);
    let before = Before::layout(&disk);

    // How long an uncut rollback of this size takes, to spread the kills over it.
    create_many(&disk.mount(), "root/pile", 300);
    // Commit the fixture first, so that each run starts from the same clean state.
    sh(&mut Command::new("sync"));
    let start = Instant::now();
    assert_exit(&disk.run(&[]), 0);
    let full = start.elapsed();

    let mut without_root = 0;
    let mut with_leftover = 0;
    let mut killed = 0;
    // Kills spread evenly over the uncut time; if none happened to land mid-deletion (a
    // loaded machine), more rounds in the second half, so the test cannot pass vacuously.
    let mut round = 0;
    while round < rounds || (with_leftover == 0 && round < 3 * rounds) {
        create_many(&disk.mount(), "root/pile", 300);
        sh(&mut Command::new("sync"));
        let fraction = if round < rounds {
            f64::from(round) / f64::from(rounds)
        } else {
            0.5 + f64::from(round - rounds) / f64::from(4 * rounds)
        };
        if disk.kill_run_after(full.mul_f64(fraction)) {
            killed += 1;
        }
        let m = disk.mount();
        let subs = m.subvolumes();
        if !subs.contains_key(Path::new("root")) {
            without_root += 1;
        }
        if subs.contains_key(Path::new("root.btrfs-rollback-tmp")) {
            with_leftover += 1;
        }
        drop(m);
        // The next run converges, whatever instant the kill hit.
        assert_exit(&disk.run(&[]), 0);
        before.assert_rolled_back(&disk, "root", "root-blank");
        round += 1;
    }
    eprintln!(
        "{round} kills spread over {:.0} ms, {killed} before the binary finished: \
         {without_root} without root, {with_leftover} with a leftover",
        full.as_secs_f64() * 1000.0
    );
    assert!(killed > 0, "no kill landed before the binary finished");
    assert!(with_leftover > 0, "no kill landed during the deletion");
    assert_eq!(without_root, 0, "root was missing after a kill");
    let out = disk.run(&[]);
    assert_exit(&out, 0);
    before.assert_rolled_back(&disk, "root", "root-blank");
}

#[test]
fn privileged_read_only_old_root_with_children() {
    let disk = layout!("ro-root");
    disk.mount().set_ro("root", true);
    assert_a_run_rolls_back(&disk);
}

#[test]
fn privileged_leftover_that_is_the_default_subvolume() {
    let (disk, before) = fixture!("default-leftover");
    {
        // As a power cut between the swap and a separate default change would have left it.
        let m = disk.mount();
        m.subvol("root.btrfs-rollback-tmp");
        m.subvol("root.btrfs-rollback-tmp/nested");
        btrfs([
            "subvolume".as_ref(),
            "set-default".as_ref(),
            m.join("root.btrfs-rollback-tmp").as_os_str(),
        ]);
    }
    assert_exit(&disk.run(&[]), 0);
    before.assert_rolled_back(&disk, "root", "root-blank");
    assert_default_is_root(&disk);
}

#[test]
fn privileged_names_like_our_leftovers_that_are_not_ours_are_kept() {
    let disk = layout!("not-ours");
    {
        let m = disk.mount();
        // Subvolume ids here are small, so 999999 is never this subvolume's id.
        m.subvol("root.btrfs-rollback-tmp.999999");
        fs::write(m.join("root.btrfs-rollback-tmp.999999/keep"), "mine").unwrap();
        fs::create_dir(m.join("root.btrfs-rollback-tmp.1")).unwrap();
    }
    assert_a_run_rolls_back(&disk);
    assert!(disk.mount().join("root.btrfs-rollback-tmp.1").is_dir());
}

/// A nested subvolume deeper than the kernel can name (INO_LOOKUP and SNAP_DESTROY_V2 by id
/// build paths of at most 4 KiB) is deleted by handle: one run, nothing left. (The attack by
/// an unprivileged user is in tests/erase.rs.)
#[test]
fn privileged_too_deep_to_delete_by_id_is_deleted_by_handle() {
    let (disk, before) = fixture!("deep");
    {
        let m = disk.mount();
        let long = "d".repeat(200);
        // bash, not dash: dash's `cd` gives up past PATH_MAX.
        sh(Command::new("bash").arg("-c").arg(format!(
            "set -e; cd '{}'; for i in $(seq 1 22); do mkdir {long}; cd {long}; done; \
             btrfs -q subvolume create deep; echo data > deep/file",
            m.join("root").display()
        )));
    }
    assert_says(&disk.run(&[]), 0, &["by handle"]);
    // `btrfs subvolume list` works again: the deep subvolume is gone.
    before.assert_rolled_back(&disk, "root", "root-blank");
}
