//! Privileged tests of `forget` against what its own view of the system does not show: an old
//! root mounted only in another mount namespace (refused, then forgotten once that namespace is
//! gone; a mount of another subvolume or of another filesystem is no reason to refuse), and an
//! old root elsewhere that cannot be read (no reason to refuse either). Real btrfs on loop
//! devices, checked with btrfs-progs, a fresh mount and /proc/PID/mountinfo.

#[macro_use]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A disk with one kept old root (the impermanence layout's root, with its nested
/// subvolumes); `mkfs` formats it. Returns the disk and the old root's name and id.
fn with_an_old_root(label: &str, mkfs: &[&str]) -> (Disk, String, u64) {
    let disk = Disk::with_mkfs(label, mkfs);
    impermanence_layout(&disk);
    assert_exit(&disk.run(&["--keep-old-roots", "5"]), 0);
    let (path, id) = disk
        .mount()
        .subvolumes()
        .into_iter()
        .find(|(p, _)| p.starts_with("old_roots") && p.components().count() == 2)
        .expect("an old root after the run");
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    (disk, name, id)
}

const MKFS: &[&str] = &["mkfs.btrfs", "-q", "-f"];

#[test]
fn privileged_forget_refuses_an_old_root_mounted_only_in_another_mount_namespace() {
    privileged!();
    let (disk, name, id) = with_an_old_root("forgetns", MKFS);
    let old = PathBuf::from("old_roots").join(&name);
    let subs = disk.mount().subvolumes();
    let nested = old.join("var/lib/machines/a");
    let nested_id = subs[&nested];
    let (at_old, at_nested) = (disk.dir.join("ns-old"), disk.dir.join("ns-nested"));
    let holder = Holder::start(&format!(
        "{}\n{}",
        mount_line(&format!("subvol={}", old.display()), &disk.dev, &at_old),
        mount_line(&format!("subvolid={nested_id}"), &disk.dev, &at_nested)
    ));
    // Mounted there, and not here.
    let theirs = holder.mount_points();
    for at in [&at_old, &at_nested] {
        assert!(theirs.contains(at.to_str().unwrap()), "{theirs}");
        assert!(!is_mounted(at), "{} is mounted here too", at.display());
    }

    let out = disk.cmd("forget").arg(&name).output().unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    for says in [
        format!("{:?} (ID {id}) is in use", old.to_str().unwrap()),
        format!(
            "subvolume {id} ({:?}) is mounted at {at_old:?}",
            old.to_str().unwrap()
        ),
        format!(
            "subvolume {nested_id} ({:?}) is mounted at {at_nested:?}",
            nested.to_str().unwrap()
        ),
        format!("in the mount namespace of PID {}", holder.pid()),
        "was not changed".to_string(),
    ] {
        assert!(err.contains(&says), "{says:?} missing from:\n{err}");
    }
    assert_eq!(
        disk.mount().subvolumes(),
        subs,
        "a refusal changed something"
    );
    // A dry run refuses alike.
    let out = disk
        .cmd("forget")
        .args(["--dry-run", &name])
        .output()
        .unwrap();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("is in use"), "{}", stderr(&out));

    // Once that namespace is gone, the same old root is forgotten.
    drop(holder);
    let out = disk.cmd("forget").arg(&name).output().unwrap();
    assert_exit(&out, 0);
    assert_only_gone(&disk, &subs, &old);
}

#[test]
fn privileged_forget_is_not_refused_by_other_mounts_in_another_mount_namespace() {
    privileged!();
    let (disk, name, id) = with_an_old_root("forgetnsctl", MKFS);
    let old = PathBuf::from("old_roots").join(&name);
    // Another filesystem with a subvolume of the same path and the same id.
    let other = Disk::new("forgetnsother");
    {
        let m = other.mount();
        let filler = m.join("filler");
        fs::create_dir(&filler).unwrap();
        let mut n = 0;
        while n + 256 < id {
            m.subvol(filler.join(n.to_string()));
            n += 1;
        }
        fs::create_dir(m.join("old_roots")).unwrap();
        m.subvol(&old);
        assert_eq!(m.id(&old), id, "the look-alike did not get the same id");
    }
    let subs = disk.mount().subvolumes();
    let holder = Holder::start(&format!(
        "{}\n{}",
        mount_line("subvol=persist", &disk.dev, &disk.dir.join("ns-persist")),
        mount_line(
            &format!("subvolid={id}"),
            &other.dev,
            &disk.dir.join("ns-other")
        )
    ));

    let out = disk.cmd("forget").arg(&name).output().unwrap();
    assert_exit(&out, 0);
    assert_only_gone(&disk, &subs, &old);
    // What the other namespace mounted is still there.
    let theirs = holder.mount_points();
    assert!(
        theirs.contains("ns-persist") && theirs.contains("ns-other"),
        "{theirs}"
    );
    drop(holder);
    assert_eq!(other.mount().id(&old), id);
}

/// The logical address of subvolume `id`'s root node, from `btrfs inspect-internal dump-tree`
/// of the root tree: its ROOT_ITEM says `bytenr`.
fn root_node(dev: &Path, id: u64) -> u64 {
    let dump = btrfs([
        "inspect-internal".as_ref(),
        "dump-tree".as_ref(),
        "-t".as_ref(),
        "root".as_ref(),
        dev.as_os_str(),
    ]);
    let key = format!("key ({id} ROOT_ITEM ");
    let at = dump
        .find(&key)
        .unwrap_or_else(|| panic!("{key} not in:\n{dump}"));
    let rest = &dump[at..];
    let bytenr = rest.find(" bytenr ").expect("bytenr") + " bytenr ".len();
    rest[bytenr..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Where logical address `logical` is on `dev` (single profile: one copy).
fn physical(dev: &Path, logical: u64) -> u64 {
    let out = sh(Command::new("btrfs-map-logical")
        .args(["-l", &logical.to_string()])
        .arg(dev));
    // "mirror 1 logical 30490624 physical 38879232 device /dev/loop3"
    let at = out.find(" physical ").expect("physical") + " physical ".len();
    out[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn privileged_forget_is_not_refused_by_an_unreadable_old_root_elsewhere() {
    privileged!();
    // Metadata in one copy: a damaged node cannot be repaired from a second one.
    let (disk, name, _) = with_an_old_root(
        "forgetbad",
        &["mkfs.btrfs", "-q", "-f", "-m", "single", "-d", "single"],
    );
    let old = PathBuf::from("old_roots").join(&name);
    let bad = Path::new("old_roots/damaged");
    let bad_id = {
        let m = disk.mount();
        m.subvol(bad);
        fs::write(m.join(bad).join("file"), "data").unwrap();
        m.id(bad)
    };
    // Damage the damaged one's root node on the disk (nothing has it mounted now).
    let node = physical(&disk.dev, root_node(&disk.dev, bad_id));
    sh(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1", "count=64", "conv=notrunc,fsync"])
        .arg(format!("of={}", disk.image.display()))
        .arg(format!("seek={}", node + 1024)));
    let subs = disk.mount().subvolumes();
    assert!(subs.contains_key(bad), "{subs:?}");
    // The oracle: a fresh mount cannot look at it.
    assert!(
        fs::symlink_metadata(disk.mount().join(bad)).is_err(),
        "the damage did not make {} unreadable",
        bad.display()
    );

    // `list` reads every old root and fails; `forget` of another one does not.
    let out = disk.cmd("list").output().unwrap();
    assert_exit(&out, 1);
    let out = disk.cmd("forget").arg(&name).output().unwrap();
    assert_exit(&out, 0);
    assert_only_gone(&disk, &subs, &old);
    // The damaged one itself cannot be read, so it is refused, untouched.
    let out = disk.cmd("forget").arg("damaged").output().unwrap();
    assert_exit(&out, 1);
    let err = stderr(&out);
    assert!(
        err.contains("old_roots/damaged") && err.contains("was not changed"),
        "{err}"
    );
    assert_only_gone(&disk, &subs, &old);
}
