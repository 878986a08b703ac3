//! Leftovers of earlier runs (issue 9, item 1): an old root set aside as
//! `<root>.btrfs-rollback-tmp.<id>` is found again at every run, deleted when it can be, and
//! reported (exit 3, a warning, `list`) at every run until it is gone.

#[macro_use]
mod common;

use std::fs;
use std::process::Command;

use common::*;

/// A subvolume with a nested child and a secret, set aside under its `<temp>.<id>` name the way
/// an interrupted run leaves it. Returns the name.
fn set_aside_leftover(m: &Mounted, secret: &str) -> String {
    m.subvol("old");
    m.subvol("old/var-lib-docker");
    fs::write(m.join("old/var-lib-docker/secret"), secret).unwrap();
    let name = format!("root.btrfs-rollback-tmp.{}", m.id("old"));
    fs::rename(m.join("old"), m.join(&name)).unwrap();
    name
}

/// Whether `needle` is in any file reachable from the top-level volume (the oracle for "no
/// byte of the secret remains reachable").
fn reachable(disk: &Disk, needle: &str) -> bool {
    let m = disk.mount();
    let out = Command::new("grep")
        .args(["-r", "-l", "-F", "--", needle])
        .arg(&m.path)
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

#[test]
fn privileged_set_aside_leftover_is_found_and_deleted() {
    let (disk, before) = fixture!("aside");
    let secret = "aside-secret-7f3a";
    let name = set_aside_leftover(&disk.mount(), secret);

    let list = disk.cmd("list").output().unwrap();
    assert_exit(&list, 0);
    let text = stdout(&list);
    assert!(text.contains(&name), "list does not show {name}:\n{text}");
    let json = stdout(&disk.output("list", ["--json"]));
    assert!(
        json.contains(&format!("\"{name}\"")),
        "list --json does not show {name}:\n{json}"
    );

    let deleted = format!("deleted \"{name}\"");
    assert_says(&disk.run(&[]), 0, &["is still on the disk", &deleted]);
    before.assert_rolled_back(&disk, "root", "root-blank");
    assert!(!reachable(&disk, secret), "the secret is still on the disk");
}

/// A leftover that cannot be deleted (an active swap file in a nested subvolume: the kernel
/// refuses with EPERM) is retried and reported at every run, exit 3, never a silent 0; once
/// it can go, the next run deletes it.
#[test]
fn privileged_undeletable_leftover_is_reported_at_every_run() {
    let (disk, before) = fixture!("pinned");
    let secret = "pinned-secret-19c2";
    let holder = disk.mount();
    let name = set_aside_leftover(&holder, secret);
    let swap = holder.join(format!("{name}/var-lib-docker/swap"));
    btrfs([
        "filesystem".as_ref(),
        "mkswapfile".as_ref(),
        "-s".as_ref(),
        "16m".as_ref(),
        swap.as_os_str(),
    ]);
    sh(Command::new("swapon").arg(&swap));
    struct SwapOff(std::path::PathBuf);
    impl Drop for SwapOff {
        fn drop(&mut self) {
            let _ = Command::new("swapoff").arg(&self.0).output();
        }
    }
    let swap = SwapOff(swap);

    for run in 1..=2 {
        let out = disk.run(&[]);
        assert_exit(&out, 3);
        let err = stderr(&out);
        assert!(
            err.contains(&name) && err.contains("is still on the disk"),
            "run {run}: {err}"
        );
        assert!(
            err.contains("is in place and committed"),
            "run {run}: {err}"
        );
        let m = disk.mount();
        assert_eq!(
            m.tree("root"),
            before.blank_tree,
            "run {run}: root not fresh"
        );
        let log = fs::read_to_string(m.join("rollback.log")).unwrap();
        assert!(log.contains(&name), "run {run}: the log does not name it");
        assert!(stdout(&disk.cmd("list").output().unwrap()).contains(&name));
    }

    drop(swap);
    drop(holder);
    let out = disk.run(&[]);
    assert_exit(&out, 0);
    before.assert_rolled_back(&disk, "root", "root-blank");
    assert!(!reachable(&disk, secret), "the secret is still on the disk");
}
