//! Privileged tests of issue 9, items 6, 7, 9, 10, 11 and 12: what a hostile or careless
//! user can leave where the tool opens its files (FIFOs, symbolic links, directories), a
//! `root` that is in use, overlong names, `restore`'s log and messages, and `--mountpoint`.
//! Each checks with btrfs-progs and a fresh mount what happened to the disk and that nothing
//! outside `root` changed. See `common/mod.rs` for when they skip.

#[macro_use]
mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;

/// Longer than any run of these tests takes on a loaded machine; a run still going is hung.
const HANG: Duration = Duration::from_secs(90);

/// Run `cmd` and fail the test if it does not finish within `HANG` (it is killed then).
fn bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > HANG {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} hung for {HANG:?} and was killed; stderr so far:\n{}",
                stderr(&out)
            );
        }
        sleep(Duration::from_millis(50));
    }
}

fn mkfifo(path: &Path) {
    sh(Command::new("mkfifo").arg(path));
}

/// Every regular file below `dir` (through a fresh mount), with its content: what `persist`
/// holds, to compare byte for byte before and after.
fn checksums(m: &Mounted, dir: &str) -> String {
    sh(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . -type f -print0 | sort -z | xargs -0 -r sha256sum",
        m.join(dir).display()
    )))
}

/// Keep one old root (a run with --keep-old-roots) and return its name in old_roots/.
fn keep_one_old_root(disk: &Disk) -> PathBuf {
    assert_exit(&bounded(disk.cmd("run").args(["--keep-old-roots", "5"])), 0);
    let (old, _) = old_roots(disk)
        .into_iter()
        .next()
        .expect("an old root was kept");
    PathBuf::from(old.file_name().unwrap())
}

/// The binary's `run` on `disk` with `mountpoint` for its mount (not the disk's own).
fn run_at(disk: &Disk, mountpoint: &Path) -> Output {
    bounded(bin_command().args(["run", "--wait", "2"]).args([
        "--device".as_ref(),
        disk.dev.as_os_str(),
        "--mountpoint".as_ref(),
        mountpoint.as_os_str(),
    ]))
}

#[test]
fn privileged_fifos_at_the_log_and_the_marker_do_not_hang_the_run() {
    let disk = layout!("fifo");
    {
        let m = disk.mount();
        mkfifo(&m.join("rollback.log"));
        mkfifo(&m.join("btrfs-rollback.restored"));
    }
    let before = Before::layout(&disk);
    let out = bounded(&mut disk.cmd("run"));
    assert!(!is_mounted(&disk.work_mountpoint()));
    let says = [
        "was a FIFO, not a log file: moved it aside",
        "\"btrfs-rollback.restored\" in the top-level volume is a FIFO",
    ];
    assert_says(&out, 0, &says);
    before.assert_rolled_back(&disk, "root", "root-blank");
    let m = disk.mount();
    // A fresh log file with this run in it; the FIFO kept aside, as it was.
    let log = fs::read_to_string(m.join("rollback.log")).unwrap();
    assert!(log.contains("rolling back"), "{log}");
    let aside: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("rollback.log.moved-aside."))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(fs::symlink_metadata(m.join(&aside[0]))
        .unwrap()
        .file_type()
        .is_fifo());
    // The stale marker was removed.
    assert!(fs::symlink_metadata(m.join("btrfs-rollback.restored")).is_err());
    drop(m);

    // restore with FIFOs at the marker and at its temporary name: replaced, not opened.
    let name = keep_one_old_root(&disk);
    let kept_id = disk.mount().id(Path::new("old_roots").join(&name));
    {
        let m = disk.mount();
        mkfifo(&m.join("btrfs-rollback.restored"));
        mkfifo(&m.join("btrfs-rollback.restored.tmp"));
    }
    let out = bounded(disk.cmd("restore").arg(&name));
    assert_exit(&out, 0);
    let m = disk.mount();
    assert_eq!(m.id("root"), kept_id);
    assert_eq!(
        fs::read_to_string(m.join("btrfs-rollback.restored"))
            .unwrap()
            .trim(),
        kept_id.to_string()
    );
    assert!(!m.join("btrfs-rollback.restored.tmp").exists());
}

#[test]
fn privileged_symlinks_at_the_log_and_the_marker_are_not_followed() {
    let disk = layout!("links");
    let persist_before = checksums(&disk.mount(), "persist");
    {
        let m = disk.mount();
        symlink("persist/etc/ssh/key", m.join("btrfs-rollback.restored")).unwrap();
        symlink("persist/etc/ssh/key", m.join("rollback.log")).unwrap();
        symlink("persist/etc", m.join("logs")).unwrap();
        symlink(m.join("persist/etc"), m.join("abslogs")).unwrap();
    }
    let before = Before::layout(&disk);

    // A link at the log file is moved aside, a link at the marker is stale and removed.
    let out = bounded(&mut disk.cmd("run"));
    let says = [
        "was a symbolic link, not a log file",
        "symbolic link (not followed)",
    ];
    assert_says(&out, 0, &says);
    before.assert_rolled_back(&disk, "root", "root-blank");
    {
        let m = disk.mount();
        assert_eq!(checksums(&m, "persist"), persist_before);
        assert!(fs::symlink_metadata(m.join("rollback.log"))
            .unwrap()
            .is_file());
        assert!(fs::symlink_metadata(m.join("btrfs-rollback.restored")).is_err());
    }

    // A link on the way to the log file (relative or absolute target): no file log, the run
    // goes on, nothing written through it.
    for log in ["logs/rollback.log", "abslogs/rollback.log"] {
        let before = Before::layout(&disk);
        let out = bounded(disk.cmd("run").args(["--log", log]));
        assert_says(&out, 0, &["cannot write the log file", "symbolic link"]);
        before.assert_rolled_back(&disk, "root", "root-blank");
        let m = disk.mount();
        assert_eq!(checksums(&m, "persist"), persist_before);
        assert!(!m.join("persist/etc/rollback.log").exists());
    }

    // restore writes its marker as a file of its own, never through a link at its name.
    let name = keep_one_old_root(&disk);
    let persist_before = checksums(&disk.mount(), "persist");
    symlink(
        "persist/etc/ssh/key",
        disk.mount().join("btrfs-rollback.restored"),
    )
    .unwrap();
    let out = bounded(disk.cmd("restore").arg(&name));
    assert_exit(&out, 0);
    let m = disk.mount();
    assert_eq!(checksums(&m, "persist"), persist_before);
    assert_eq!(
        fs::read_to_string(m.join("persist/etc/ssh/key")).unwrap(),
        "secret\n"
    );
    let marker = m.join("btrfs-rollback.restored");
    assert!(fs::symlink_metadata(&marker).unwrap().is_file());
    assert_eq!(
        fs::read_to_string(&marker).unwrap().trim(),
        m.id("root").to_string()
    );
    assert!(!m.join("btrfs-rollback.restored.tmp").exists());
}

#[test]
fn privileged_log_paths_that_climb_out_are_usage_errors() {
    let disk = layout!("climb");
    let subs = disk.mount().subvolumes();
    let persist_before = checksums(&disk.mount(), "persist");
    for log in [
        "../escape.log",
        "persist/../../escape.log",
        "/tmp/../escape.log",
    ] {
        for sub in ["run", "restore"] {
            let mut cmd = disk.cmd(sub);
            cmd.args(["--log", log]);
            if sub == "restore" {
                cmd.arg("anything");
            }
            assert_says(&bounded(&mut cmd), 2, &["contains \"..\""]);
        }
    }
    // Nothing was mounted, written or changed: not next to the mountpoint, not on the disk.
    assert!(!disk.dir.join("escape.log").exists());
    assert!(!disk.work_mountpoint().exists());
    let m = disk.mount();
    assert_eq!(m.subvolumes(), subs);
    assert_eq!(checksums(&m, "persist"), persist_before);
    assert!(!m.join("rollback.log").exists());
}

#[test]
fn privileged_directories_named_like_the_marker_or_the_log_do_not_fail_runs() {
    let disk = layout!("dirs");
    {
        let m = disk.mount();
        fs::create_dir(m.join("btrfs-rollback.restored")).unwrap();
        fs::write(m.join("btrfs-rollback.restored/inside"), "mine").unwrap();
        fs::create_dir(m.join("rollback.log")).unwrap();
    }
    for _ in 0..2 {
        let before = Before::layout(&disk);
        let says = [
            "is a directory; it is left alone",
            "is a directory, not a log file",
        ];
        assert_says(&bounded(&mut disk.cmd("run")), 0, &says);
        before.assert_rolled_back(&disk, "root", "root-blank");
        let m = disk.mount();
        assert_eq!(
            fs::read_to_string(m.join("btrfs-rollback.restored/inside")).unwrap(),
            "mine"
        );
        assert!(m.join("rollback.log").is_dir());
    }
    // restore cannot put its marker there: refused, nothing changed.
    fs::remove_dir(disk.mount().join("rollback.log")).unwrap();
    let name = keep_one_old_root(&disk);
    let subs = disk.mount().subvolumes();
    let out = bounded(disk.cmd("restore").arg(&name));
    assert_says(
        &out,
        1,
        &["cannot write the restore marker", "were not changed"],
    );
    let m = disk.mount();
    assert_eq!(m.subvolumes(), subs);
    assert!(!m.join("btrfs-rollback.restored.tmp").exists());
    assert!(m.join("btrfs-rollback.restored/inside").exists());
}

/// `root` mounted only in another mount namespace (a container's, a service's with
/// `PrivateMounts=`) is in use all the same: `run` refuses and names the PID whose namespace
/// has it; once that namespace is gone, it rolls back.
#[test]
fn privileged_root_mounted_only_in_another_mount_namespace_is_refused() {
    let disk = layout!("livens");
    let subs = disk.mount().subvolumes();
    let at = disk.dir.join("ns-root");
    let holder = Holder::start(&mount_line("subvol=root", &disk.dev, &at));
    assert!(holder.mount_points().contains(at.to_str().unwrap()));
    assert!(!is_mounted(&at), "{} is mounted here too", at.display());
    let out = bounded(&mut disk.cmd("run"));
    let pid = format!("in the mount namespace of PID {}", holder.pid());
    let says = [
        "is in use on this system",
        "shows \"root\"",
        &pid,
        "was not changed",
    ];
    assert_says(&out, 1, &says);
    assert_eq!(disk.mount().subvolumes(), subs);
    drop(holder);
    assert_a_run_rolls_back(&disk);
}

#[test]
fn privileged_a_mounted_root_is_refused() {
    let disk = layout!("live");
    let subs = disk.mount().subvolumes();
    let root_id = disk.mount().id("root");

    // root itself, and a subvolume nested in it, each mounted alone.
    for (subvol, at) in [
        ("root", "live root"),
        ("root/var/lib/machines", "live-nested"),
    ] {
        let live = disk.mount_subvol(subvol, at);
        let out = bounded(&mut disk.cmd("run"));
        let shows = format!("shows {subvol:?}");
        let says = ["is in use on this system", &shows, "was not changed"];
        let err = assert_says(&out, 1, &says);
        assert!(
            err.contains(&format!("{:?}", live.path.to_str().unwrap())),
            "the mount is not named: {err}"
        );
        assert_eq!(disk.mount().subvolumes(), subs);
        // A dry run changes nothing anyway: it says a run would refuse.
        let out = bounded(disk.cmd("run").arg("--dry-run"));
        assert_says(&out, 0, &["a run would refuse"]);
    }
    // A mount of another subvolume (persist) or of the blank is not a live root.
    let name = {
        let _persist = disk.mount_subvol("persist", "persist-mounted");
        let _blank = disk.mount_subvol("root-blank", "blank-mounted");
        keep_one_old_root(&disk)
    };
    let live = disk.mount_subvol("root", "live-again");

    // --force-mounted goes on: the live root is replaced under the mount.
    let live_id = disk.mount().id("root");
    assert_ne!(live_id, root_id);
    let before = Before::layout(&disk);
    let out = bounded(disk.cmd("run").arg("--force-mounted"));
    let err = stderr(&out);
    eprintln!(
        "run --force-mounted with root mounted: {:?}\n{err}",
        out.status
    );
    assert!(err.contains("going on because of --force-mounted"), "{err}");
    assert!(matches!(out.status.code(), Some(0 | 3)), "{err}");
    let m = disk.mount();
    assert_ne!(m.id("root"), live_id, "root was not replaced");
    assert_eq!(m.tree("root"), before.blank_tree);
    for (path, (id, tree)) in &before.siblings {
        assert_eq!(m.subvolumes().get(path), Some(id), "{path:?}");
        assert_eq!(&m.tree(path), tree, "{path:?}");
    }
    drop(live);

    // restore deletes nothing, and it is how a running system restores: a mounted root is
    // exchanged under the mount, with a warning that names the mount.
    let live = disk.mount_subvol("root", "live-restore");
    let kept_id = disk.mount().id(Path::new("old_roots").join(&name));
    let replaced_id = disk.mount().id("root");
    let out = bounded(disk.cmd("restore").arg(&name));
    assert_says(&out, 0, &["live-restore", "reboot soon"]);
    assert_eq!(disk.mount().id("root"), kept_id);
    // The running system's subvolume is kept whole as an old root.
    assert!(disk
        .mount()
        .subvolumes()
        .iter()
        .any(|(p, id)| p.starts_with("old_roots") && *id == replaced_id));
    drop(live);
}

#[test]
fn privileged_overlong_root_names_are_refused() {
    let disk = layout!("longname");
    let long = "r".repeat(236);
    disk.mount().subvol(&long);
    let subs = disk.mount().subvolumes();
    let out = bounded(disk.cmd("run").args(["--root", &long]));
    assert_says(&out, 2, &["215 bytes at most"]);
    let out = bounded(disk.cmd("restore").args(["--root", &long, "x"]));
    assert_exit(&out, 2);
    assert_eq!(disk.mount().subvolumes(), subs);

    // The longest accepted name still works with a leftover set aside as <temp>.<id>.
    let root = "r".repeat(215);
    {
        let m = disk.mount();
        m.snapshot("root-blank", &root, false);
        fs::write(m.join(&root).join("secret"), "x").unwrap();
        m.subvol(format!("{root}.btrfs-rollback-tmp"));
    }
    let before = Before::take(&disk, &root, "root-blank");
    let out = bounded(disk.cmd("run").args(["--root", &root]));
    assert_exit(&out, 0);
    let m = disk.mount();
    assert_eq!(m.tree(&root), before.blank_tree);
    let left: Vec<_> = m
        .subvolumes()
        .into_keys()
        .filter(|p| p.to_str().unwrap().starts_with(&format!("{root}.")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let ours = |p: &PathBuf| p.to_str().unwrap().starts_with("rrrr");
    for (path, (id, _)) in before.siblings.iter().filter(|(p, _)| !ours(p)) {
        assert_eq!(m.subvolumes().get(path), Some(id), "{path:?}");
    }
}

#[test]
fn privileged_mountpoint_parents_are_never_created() {
    let disk = layout!("mountpoint");
    let subs = disk.mount().subvolumes();
    let deep = disk.dir.join("a/b/c");
    let out = run_at(&disk, &deep);
    assert_says(&out, 1, &["neither does its parent directory"]);
    assert!(!disk.dir.join("a").exists(), "a parent was created");
    assert_eq!(disk.mount().subvolumes(), subs);

    // With the parent there, only the last component is made, and removed again.
    fs::create_dir_all(disk.dir.join("a/b")).unwrap();
    let before = Before::layout(&disk);
    assert_exit(&run_at(&disk, &deep), 0);
    before.assert_rolled_back(&disk, "root", "root-blank");
    assert!(!is_mounted(&deep));
    assert!(!deep.exists(), "the mountpoint was left behind");
    assert!(
        disk.dir.join("a/b").is_dir(),
        "an existing parent was removed"
    );

    // A symbolic link as the mountpoint is refused, not followed.
    symlink(disk.dir.join("a/b"), disk.dir.join("link")).unwrap();
    let subs = disk.mount().subvolumes();
    let out = run_at(&disk, &disk.dir.join("link"));
    assert_says(&out, 1, &["is a symbolic link"]);
    assert!(!is_mounted(&disk.dir.join("a/b")));
    assert_eq!(disk.mount().subvolumes(), subs);
}

#[test]
fn privileged_restore_logs_where_it_is_told_and_refuses_a_linked_old_roots() {
    let disk = layout!("restorelog");
    let name = keep_one_old_root(&disk);
    let kept_id = disk.mount().id(Path::new("old_roots").join(&name));
    let log_len = fs::metadata(disk.mount().join("rollback.log"))
        .unwrap()
        .len();

    // old_roots as a link to persist, where a subvolume of that name waits: refused, no marker.
    {
        let m = disk.mount();
        fs::rename(m.join("old_roots"), m.join("old_roots.real")).unwrap();
        m.subvol(Path::new("persist").join(&name));
        symlink("persist", m.join("old_roots")).unwrap();
    }
    let subs = disk.mount().subvolumes();
    let persist_before = checksums(&disk.mount(), "persist");
    let out = bounded(
        disk.cmd("restore")
            .args(["--log", "restore.log"])
            .arg(&name),
    );
    let says = ["a symbolic link is not followed", "were not changed"];
    assert_says(&out, 1, &says);
    {
        let m = disk.mount();
        assert_eq!(m.subvolumes(), subs);
        assert_eq!(checksums(&m, "persist"), persist_before);
        assert!(!m.join("btrfs-rollback.restored").exists());
        let log = fs::read_to_string(m.join("restore.log")).unwrap();
        assert!(log.contains("a symbolic link is not followed"), "{log}");
        fs::remove_file(m.join("old_roots")).unwrap();
        fs::rename(m.join("old_roots.real"), m.join("old_roots")).unwrap();
    }

    // The real one: restored, logged to --log only, and says what it did.
    let out = bounded(
        disk.cmd("restore")
            .args(["--log", "restore.log"])
            .arg(&name),
    );
    let err = assert_says(&out, 0, &["the next run keeps it once"]);
    assert!(!err.contains("not changed"), "{err}");
    let m = disk.mount();
    assert_eq!(m.id("root"), kept_id);
    let log = fs::read_to_string(m.join("restore.log")).unwrap();
    assert!(log.contains("restoring"), "{log}");
    assert_eq!(
        fs::metadata(m.join("rollback.log")).unwrap().len(),
        log_len,
        "restore wrote to rollback.log though --log said restore.log"
    );
}

#[test]
fn privileged_log_rotation_never_writes_through_a_link() {
    let disk = layout!("rotate");
    {
        let m = disk.mount();
        fs::write(m.join("rollback.log"), vec![b'x'; 2 << 20]).unwrap();
        symlink("persist/etc/ssh/key", m.join("rollback.log.old")).unwrap();
    }
    let persist_before = checksums(&disk.mount(), "persist");
    let before = Before::layout(&disk);
    let out = bounded(&mut disk.cmd("run"));
    assert_exit(&out, 0);
    before.assert_rolled_back(&disk, "root", "root-blank");
    let m = disk.mount();
    assert_eq!(checksums(&m, "persist"), persist_before);
    // The rename replaced the link itself with the full log.
    let old = fs::symlink_metadata(m.join("rollback.log.old")).unwrap();
    assert!(old.is_file());
    assert_eq!(old.len(), 2 << 20);
    assert!(fs::metadata(m.join("rollback.log")).unwrap().len() < 64 << 10);
}

/// A device node at the restore marker's name (the top level is mounted nodev, so opening it
/// fails with EACCES) is a stale marker: ignored with a warning and removed, not a refusal at
/// every boot.
#[test]
fn privileged_a_device_node_at_the_marker_does_not_fail_runs() {
    let disk = layout!("marker-dev");
    sh(Command::new("mknod")
        .arg(disk.mount().join("btrfs-rollback.restored"))
        .args(["c", "1", "3"]));
    let before = Before::layout(&disk);
    assert_says(&bounded(&mut disk.cmd("run")), 0, &["ignoring it as stale"]);
    before.assert_rolled_back(&disk, "root", "root-blank");
    assert!(fs::symlink_metadata(disk.mount().join("btrfs-rollback.restored")).is_err());
}
