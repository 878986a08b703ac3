//! The erase guarantee (issue 9): whatever a local user, a root process in the running system,
//! a quota, a full disk or two kills in a row did, after the documented number of runs no
//! subvolume of the old root and no byte of a secret written in it is reachable from the top
//! level, and nothing outside `root` changed. Checked with btrfs-progs, grep and a fresh mount.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

/// What an attacker writes in `root`; it must not survive.
const SECRET: &str = "SECRET-7f3a9c-do-not-survive";

/// Run a bash script as the unprivileged user 65534 (`nobody`), in `dir`.
fn as_nobody(dir: &Path, script: &str) -> String {
    sh(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["bash", "-c", script])
        .current_dir(dir))
}

/// Files below the top level that hold the secret (grep -r does not follow symlinks and
/// walks paths of any length).
fn secret_files(m: &Mounted) -> Vec<String> {
    let out = Command::new("grep")
        .args(["-rlF", "--", SECRET])
        .arg(&m.path)
        .output()
        .unwrap();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Ids of `root` and every subvolume nested in it, by `btrfs subvolume list`.
fn ids_under(m: &Mounted, root: &str) -> BTreeSet<u64> {
    m.subvolumes()
        .into_iter()
        .filter(|(p, _)| p.starts_with(root))
        .map(|(_, id)| id)
        .collect()
}

/// Nothing of the old root is reachable: none of its subvolume ids, no secret.
fn assert_erased(disk: &Disk, old: &BTreeSet<u64>) {
    let m = disk.mount();
    let now: BTreeSet<u64> = m.subvolumes().into_values().collect();
    let left: Vec<_> = old.intersection(&now).collect();
    assert!(
        left.is_empty(),
        "old subvolumes still there: {left:?} in {:?}",
        m.subvolumes()
    );
    assert_eq!(
        secret_files(&m),
        Vec::<String>::new(),
        "the secret survived"
    );
}

/// What a successful run promises (`Before::assert_rolled_back`), and nothing of the old root
/// reachable (`assert_erased`).
fn assert_rolled_back_and_erased(disk: &Disk, before: &Before, old: &BTreeSet<u64>) {
    before.assert_rolled_back(disk, "root", "root-blank");
    assert_erased(disk, old);
}

/// A secret in `root` itself and in every directory given (relative to the top level).
fn plant_secret(m: &Mounted, dirs: &[&str]) {
    for dir in ["root/etc"].iter().chain(dirs) {
        fs::write(m.join(dir).join("secret"), SECRET).unwrap();
    }
}

/// A world-writable `root/var/tmp`, where any local user can make subvolumes.
fn world_writable_tmp(m: &Mounted) -> PathBuf {
    let tmp = m.join("root/var/tmp");
    fs::create_dir_all(&tmp).unwrap();
    sh(Command::new("chmod").arg("1777").arg(&tmp));
    tmp
}

/// What any local user can do: in a world-writable directory of `root`, 18 directories of 250
/// bytes (deeper than the kernel can name), then a subvolume `deepsub` holding the secret, and
/// if `inner`, a subvolume in it with the secret too. With a secret in `root` itself. Returns
/// the ids of `root` and of every subvolume in it.
fn deep_subvolume_of_a_user(m: &Mounted, inner: bool) -> BTreeSet<u64> {
    let tmp = world_writable_tmp(m);
    plant_secret(m, &[]);
    let mut old = ids_under(m, "root");
    let long = "u".repeat(250);
    let (create_inner, inner_id) = if inner {
        (
            format!("btrfs -q subvolume create deepsub/inner; echo {SECRET} > deepsub/inner/s;"),
            "; btrfs inspect-internal rootid deepsub/inner",
        )
    } else {
        (String::new(), "")
    };
    let ids = as_nobody(
        &tmp,
        &format!(
            "set -e; for i in $(seq 1 18); do mkdir {long}; cd {long}; done; \
             btrfs -q subvolume create deepsub; echo {SECRET} > deepsub/secret; {create_inner} \
             btrfs inspect-internal rootid deepsub{inner_id}"
        ),
    );
    old.extend(ids.split_whitespace().map(|i| i.parse::<u64>().unwrap()));
    old
}

/// Any local user can make a nested subvolume deeper than the kernel can name (18 directories
/// of 250 bytes in a world-writable directory, then `btrfs subvolume create`). One run erases
/// it all: the deep subvolume is deleted by handle.
#[test]
fn privileged_deep_path_made_by_a_user_is_erased() {
    let (disk, before) = fixture!("deep-user");
    let old = deep_subvolume_of_a_user(&disk.mount(), true);
    assert_says(&disk.run(&[]), 0, &["too deep to delete by id, by handle"]);
    assert_rolled_back_and_erased(&disk, &before, &old);
}

/// `chattr +i` on a nested subvolume's top directory and on `root`'s own, `chattr +a` on a
/// directory holding a nested subvolume and on one holding a read-only one: all cleared,
/// everything erased in one run.
#[test]
fn privileged_immutable_and_append_only_flags_are_cleared() {
    let (disk, before) = fixture!("chattr");
    let old = {
        let m = disk.mount();
        fs::create_dir_all(m.join("root/opt")).unwrap();
        m.subvol("root/opt/held");
        m.subvol("root/opt/ro");
        m.subvol("root/opt/ro/child");
        plant_secret(
            &m,
            &[
                "root/opt/held",
                "root/var/lib/machines/a",
                "root/opt/ro/child",
            ],
        );
        let chattr = |flag: &str, rel: &str| {
            sh(Command::new("chattr").arg(flag).arg(m.join(rel)));
        };
        chattr("+i", "root/opt/ro/child/secret");
        chattr("+i", "root/var/lib/machines/a");
        chattr("+a", "root/opt");
        chattr("+a", "root/opt/ro");
        m.set_ro("root/opt/ro", true);
        chattr("+i", "root");
        ids_under(&m, "root")
    };
    let says = [
        "cleared the immutable/append-only flags of \"root\"",
        "\"root.btrfs-rollback-tmp/var/lib/machines/a\"",
    ];
    assert_says(&disk.run(&[]), 0, &says);
    assert_rolled_back_and_erased(&disk, &before, &old);
}

/// `btrfs subvolume set-default` on a nested subvolume used to make every run refuse. The
/// default follows `root` instead, in the swap's commit, and the old tree goes.
#[test]
fn privileged_default_nested_in_root_follows_the_fresh_root() {
    let (disk, before) = fixture!("default-nested-erase");
    let old = {
        let m = disk.mount();
        plant_secret(&m, &["root/var/lib/machines/a/b"]);
        btrfs([
            "subvolume".as_ref(),
            "set-default".as_ref(),
            m.join("root/var/lib/machines/a/b").as_os_str(),
        ]);
        ids_under(&m, "root")
    };
    assert_says(&disk.run(&[]), 0, &["the default follows \"root\""]);
    assert_rolled_back_and_erased(&disk, &before, &old);
    assert_default_is_root(&disk);
}

/// A qgroup limit on `root`, filled by a user (a nested subvolume inside it): deleting the
/// nested subvolume reserves metadata in the full qgroup (EDQUOT). The limits of the qgroups
/// being erased are lifted; everything goes in one run; other qgroups keep their limits.
#[test]
fn privileged_qgroup_limit_on_root_is_lifted() {
    let (disk, before) = fixture!("qgroup");
    let old = {
        let m = disk.mount();
        btrfs(["quota".as_ref(), "enable".as_ref(), m.path.as_os_str()]);
        for (limit, sub) in [("64M", "root"), ("300M", "persist")] {
            btrfs([
                "qgroup".as_ref(),
                "limit".as_ref(),
                limit.as_ref(),
                m.join(sub).as_os_str(),
            ]);
        }
        let tmp = world_writable_tmp(&m);
        plant_secret(&m, &[]);
        as_nobody(
            &tmp,
            &format!(
                "btrfs -q subvolume create nested && echo {SECRET} > nested/secret && \
                 dd if=/dev/zero of=nested/fill bs=1M count=100 status=none; \
                 dd if=/dev/zero of=fill bs=1M count=100 status=none; true"
            ),
        );
        ids_under(&m, "root")
    };
    assert_says(&disk.run(&[]), 0, &["EDQUOT", "lifted the quota limits"]);
    assert_rolled_back_and_erased(&disk, &before, &old);
    let m = disk.mount();
    let show = btrfs([
        "qgroup".as_ref(),
        "show".as_ref(),
        "-r".as_ref(),
        "--raw".as_ref(),
        m.path.as_os_str(),
    ]);
    let persist = m.id("persist");
    assert!(
        show.lines()
            .any(|l| l.starts_with(&format!("0/{persist} ")) && l.contains("314572800")),
        "persist lost its limit:\n{show}"
    );
}

/// Fill the data, then the metadata (empty files with large xattrs) of the filesystem, from
/// `dir`, and sync, so that the run starts from a full filesystem on the disk.
fn fill_filesystem(dir: &Path) {
    let n = fill_with_files(dir);
    assert!(n > 100, "the metadata filled after {n} files only");
    sh(&mut Command::new("sync"));
}

/// `fill_filesystem`'s filling; returns how many files it took.
fn fill_with_files(dir: &Path) -> usize {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut f = fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);
    let value = vec![b'x'; 3900];
    let mut n = 0;
    loop {
        let path = dir.join(format!("x{n}"));
        if fs::File::create(&path).is_err() {
            break;
        }
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path, a NUL-terminated name, a live buffer and its length.
        let ret = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"user.fill".as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if ret != 0 {
            break;
        }
        n += 1;
    }
    n
}

/// A full filesystem (data and metadata, filled from `root`'s own tree) made the exchange
/// fail with ENOSPC at every boot. Now the run makes room (nested subvolumes first, then, as
/// the last resort, the old root before its replacement) and rolls back in one run, logging
/// the instants without a `root` at warning level, and the log file gets the whole run.
#[test]
fn privileged_full_filesystem_still_rolls_back() {
    let (disk, before) = fixture!("full");
    let old = {
        let m = disk.mount();
        fs::create_dir_all(m.join("root/var/tmp")).unwrap();
        // And a leftover of an interrupted run, which must be set aside (a rename) first.
        m.subvol("root.btrfs-rollback-tmp");
        m.subvol("root.btrfs-rollback-tmp/nested");
        plant_secret(
            &m,
            &[
                "root/var/lib/machines/a",
                "root/var/tmp",
                "root.btrfs-rollback-tmp/nested",
            ],
        );
        fill_filesystem(&m.join("root/var/tmp"));
        let mut ids = ids_under(&m, "root");
        ids.extend(ids_under(&m, "root.btrfs-rollback-tmp"));
        ids
    };
    let out = disk.run(&[]);
    eprintln!("{}", stderr(&out));
    assert_says(&out, 0, &["ENOSPC", "making room"]);
    assert_rolled_back_and_erased(&disk, &before, &old);
    let m = disk.mount();
    let log = fs::read_to_string(m.join("rollback.log")).unwrap();
    assert!(log.contains("the filesystem is full"), "{log}");
    assert!(log.contains("done: \"root\" is a fresh snapshot"), "{log}");
    drop(m);
    // The next boot is an ordinary one.
    assert_a_run_rolls_back(&disk);
}

/// Turns the swap files below a directory off when dropped, so that a failing test does not
/// leave one on. By what `/proc/swaps` says, since the rollback renames the path it had.
struct Swap(std::path::PathBuf);

impl Drop for Swap {
    fn drop(&mut self) {
        let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
        for line in swaps.lines().skip(1) {
            let Some(path) = line.split_whitespace().next() else {
                continue;
            };
            if Path::new(path).starts_with(&self.0) {
                let _ = Command::new("swapoff").arg(path).output();
            }
        }
    }
}

/// A nested subvolume that cannot be deleted (an active swap file: the kernel refuses with
/// EPERM) must not stop the rest: everything else is deleted, the run exits 3 and names what
/// is left by path, and the run after it (swap file gone) erases the rest.
#[test]
fn privileged_undeletable_subvolume_does_not_stop_the_rest() {
    let (disk, before) = fixture!("undeletable");
    let (old, stuck) = {
        let m = disk.mount();
        m.subvol("root/swap");
        plant_secret(&m, &["root/var/lib/machines/a/b/c"]);
        let file = m.join("root/swap/file");
        sh(Command::new("truncate").arg("-s0").arg(&file));
        sh(Command::new("chattr").arg("+C").arg(&file));
        sh(Command::new("fallocate").args(["-l", "16M"]).arg(&file));
        sh(Command::new("chmod").arg("600").arg(&file));
        sh(Command::new("mkswap").arg(&file));
        let stuck = m.id("root/swap");
        (ids_under(&m, "root"), stuck)
    };
    // Dropped in this order: swapoff, then unmount.
    let active = {
        let m = disk.mount();
        let file = m.join("root/swap/file");
        sh(Command::new("swapon").arg(&file));
        (Swap(disk.dir.clone()), m)
    };
    let says = [
        "\"root.btrfs-rollback-tmp/swap\"",
        "EPERM",
        "is in place and committed",
    ];
    assert_says(&disk.run(&[]), 3, &says);
    {
        let m = disk.mount();
        let subs = m.subvolumes();
        let left: Vec<_> = subs.values().filter(|id| old.contains(id)).collect();
        // Only the undeletable one and the old root holding it.
        assert_eq!(left.len(), 2, "{subs:?}");
        assert!(left.contains(&&stuck), "{subs:?}");
        assert_eq!(m.tree("root"), before.blank_tree, "root is not fresh");
    }
    drop(active);
    assert_exit(&disk.run(&[]), 0);
    assert_rolled_back_and_erased(&disk, &before, &old);
}

/// The deletion that follows the plan's walk (`Eraser::delete_walked`, what `run` and the
/// pruning use) when the tree changed since the walk: a subvolume moved out of `root` is not
/// deleted with it (it is no longer held where the walk found it), and one created in `root`
/// since is (the tree is walked again).
#[test]
fn privileged_deletion_after_a_stale_walk_keeps_what_moved_out() {
    use btrfs_rollback::erase::Eraser;
    use btrfs_rollback::subvolume::{self, TOP_LEVEL};
    use std::ffi::OsStr;
    use std::os::fd::{AsFd, OwnedFd};

    let disk = layout!("stalewalk");
    let m = disk.mount();
    let top: OwnedFd = fs::File::open(&m.path).unwrap().into();
    let fs = top.as_fd();
    let root = m.id("root");
    let walked = subvolume::nested_post_order(fs, root, Path::new("root")).unwrap();
    assert_eq!(walked.len(), 6, "{walked:?}");
    // Since the walk: b (with c in it) moved to persist, a new subvolume in root.
    fs::rename(m.join("root/var/lib/machines/a/b"), m.join("persist/b")).unwrap();
    m.subvol("root/tmp/new");
    let (b, c) = (m.id("persist/b"), m.id("persist/b/c"));
    let eraser = Eraser {
        fs,
        fallback_default: TOP_LEVEL,
    };
    let deleted = eraser
        .delete_walked(OsStr::new("root"), root, &walked, Path::new("root"))
        .unwrap();
    // machines, a, srv, srv/child and new.
    assert_eq!(deleted, 5);
    let subs = m.subvolumes();
    assert!(!subs.values().any(|id| *id == root), "{subs:?}");
    assert_eq!(subs.get(Path::new("persist/b")), Some(&b), "{subs:?}");
    assert_eq!(subs.get(Path::new("persist/b/c")), Some(&c), "{subs:?}");
    assert!(!subs.keys().any(|p| p.starts_with("root")), "{subs:?}");
}

/// SIGKILL a run during its deletion of the old root, SIGKILL the next run during its
/// cleanup of what the first left, then run once more: nothing of the old roots is left.
#[test]
fn privileged_double_kill_leaves_nothing_after_the_next_run() {
    let disk = layout!("double-kill");
    let rounds = kill_rounds(6);
    let before = Before::layout(&disk);
    let populate = |n: usize| {
        let m = disk.mount();
        create_many(&m, "root/pile", n);
        plant_secret(&m, &["root/pile/s0"]);
        let ids = ids_under(&m, "root");
        drop(m);
        sh(&mut Command::new("sync"));
        ids
    };
    // How long an uncut rollback of this size takes.
    populate(300);
    let start = Instant::now();
    assert_exit(&disk.run(&[]), 0);
    let full = start.elapsed();

    let mut doubles = 0;
    let mut aside_left = 0;
    let mut all_old = BTreeSet::new();
    // More rounds if no second kill landed in a cleanup yet (a loaded machine), so that the
    // test cannot pass vacuously.
    let mut round = 0;
    while round < rounds || (aside_left == 0 && round < 4 * rounds) {
        let fraction = f64::from(round % rounds) / f64::from(rounds);
        round += 1;
        let old = populate(300);
        all_old.extend(old.iter().copied());
        // The first kill after the swap, during the deletion.
        let first = full.mul_f64(0.2 + 0.4 * fraction);
        disk.kill_run_after(first);
        let left = {
            let m = disk.mount();
            let now: BTreeSet<u64> = m.subvolumes().into_values().collect();
            assert!(m.join("root").is_dir(), "no root after the first kill");
            old.intersection(&now).count()
        };
        if left == 0 {
            continue;
        }
        // The second run has a leftover to clean up; kill it early in that cleanup.
        let second = full.mul_f64(0.15 + 0.4 * fraction);
        if disk.kill_run_after(second) {
            doubles += 1;
        }
        {
            let m = disk.mount();
            assert!(m.join("root").is_dir(), "no root after the second kill");
            let asides = fs::read_dir(&m.path)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("root.btrfs-rollback-tmp.")
                })
                .count();
            aside_left += usize::from(asides > 0);
        }
        // The documented number of runs: one more clears everything.
        assert_exit(&disk.run(&[]), 0);
        assert_rolled_back_and_erased(&disk, &before, &all_old);
    }
    eprintln!("{round} rounds: {doubles} double kills, {aside_left} left a set-aside leftover");
    assert!(doubles > 0, "no run was killed twice in a row");
    assert!(
        aside_left > 0,
        "no second kill landed during the cleanup of a set-aside leftover"
    );
}

/// The same full filesystem, filled from inside a subvolume nested in `root`: deleting what is
/// nested makes room, and the swap happens with `root` in place at every instant.
#[test]
fn privileged_full_filesystem_from_a_nested_subvolume_keeps_root_throughout() {
    let (disk, before) = fixture!("full-nested");
    let old = {
        let m = disk.mount();
        m.subvol("root/var/tmp");
        plant_secret(&m, &["root/var/tmp"]);
        fill_filesystem(&m.join("root/var/tmp"));
        ids_under(&m, "root")
    };
    let says = ["ENOSPC", "the swap worked after making room"];
    let err = assert_says(&disk.run(&[]), 0, &says);
    assert!(!err.contains("NO \"root\""), "{err}");
    assert_rolled_back_and_erased(&disk, &before, &old);
}

/// Fill the filesystem from `persist/fill`; returns how many files that directory holds.
fn fill_from_persist(m: &Mounted) -> usize {
    fs::create_dir(m.join("persist/fill")).unwrap();
    fill_filesystem(&m.join("persist/fill"));
    fs::read_dir(m.join("persist/fill")).unwrap().count()
}

/// `persist` as `fill_from_persist` left it: as many files in `persist/fill`, its key intact.
fn assert_persist_kept(m: &Mounted, files: usize) {
    assert_eq!(
        fs::read_dir(m.join("persist/fill")).unwrap().count(),
        files,
        "persist changed"
    );
    assert_eq!(
        fs::read_to_string(m.join("persist/etc/ssh/key")).unwrap(),
        "secret\n"
    );
}

/// A filesystem filled from outside `root` (`persist`): deleting the old root first would not
/// make room, so the last resort is not taken. The run refuses (exit 1) with `root` still the
/// old one, and `persist` is not touched.
#[test]
fn privileged_full_filesystem_from_outside_root_never_leaves_no_root() {
    let disk = layout!("full-outside");
    let (root_id, files) = {
        let m = disk.mount();
        (m.id("root"), fill_from_persist(&m))
    };
    let out = disk.run(&[]);
    eprintln!("{}", stderr(&out));
    let err = assert_says(&out, 1, &["the space is held outside"]);
    assert!(!err.contains("NO \"root\""), "{err}");
    let m = disk.mount();
    assert_eq!(m.id("root"), root_id, "root is not the old one");
    assert_persist_kept(&m, files);
}

/// Subvolumes below `root`, by path, with their ids (btrfs-progs as the oracle).
fn nested_of_root(m: &Mounted) -> Vec<(std::path::PathBuf, u64)> {
    m.subvolumes()
        .into_iter()
        .filter(|(p, _)| p.starts_with("root") && p != Path::new("root"))
        .collect()
}

/// The reviewer's case: `root` holds metadata of its own (1,500 small files, inline in its
/// tree: well over 1 MiB), but the filesystem is filled, data then metadata, from `persist`.
/// Deleting the old root first would not make room, so the run must refuse (exit 1) before
/// touching `root`: same id, same files, same nested subvolumes (nothing deleted in it to make
/// room), no window without a `root`, nothing moved to `old_roots/`, `persist` unchanged.
#[test]
fn privileged_full_from_persist_with_a_busy_root_leaves_root_whole() {
    let disk = layout!("full-persist", "300M");
    let (root_id, tree, deep, nested, files) = {
        let m = disk.mount();
        fs::create_dir_all(m.join("root/usr/share")).unwrap();
        for i in 0..1500 {
            fs::write(m.join(format!("root/usr/share/f{i}")), format!("{i:>1500}")).unwrap();
        }
        sh(&mut Command::new("sync"));
        let files = fill_from_persist(&m);
        (
            m.id("root"),
            m.tree("root"),
            m.tree("root/var/lib/machines/a/b/c"),
            nested_of_root(&m),
            files,
        )
    };
    assert!(nested.len() >= 6, "{nested:?}");
    let out = disk.run(&["--keep-old-roots", "3"]);
    eprintln!("{}", stderr(&out));
    let says = ["the space is held outside", "the rollback did not happen"];
    let err = assert_says(&out, 1, &says);
    assert!(!err.contains("NO \"root\""), "{err}");
    assert!(!err.contains("made room: deleted"), "{err}");
    let m = disk.mount();
    assert_eq!(m.id("root"), root_id, "root is not the old one");
    assert_eq!(m.tree("root"), tree, "root's files changed");
    assert_eq!(
        nested_of_root(&m),
        nested,
        "root's nested subvolumes changed"
    );
    assert_eq!(m.tree("root/var/lib/machines/a/b/c"), deep);
    assert!(!m.join("old_roots").exists(), "something was kept");
    assert_persist_kept(&m, files);
}

/// The last resort with retention on: the space is held by `root`'s own files, so the old
/// root is deleted before its replacement exists and cannot be kept; the final line says so.
#[test]
fn privileged_full_by_root_itself_says_the_old_root_went_first() {
    let (disk, before) = fixture!("full-self", "300M");
    let old = {
        let m = disk.mount();
        // The default follows `root`: parked at the blank in the window, then the fresh root.
        btrfs([
            "subvolume".to_string(),
            "set-default".to_string(),
            m.id("root").to_string(),
            m.path.display().to_string(),
        ]);
        fs::create_dir_all(m.join("root/var/tmp")).unwrap();
        plant_secret(&m, &["root/var/tmp"]);
        fill_filesystem(&m.join("root/var/tmp"));
        ids_under(&m, "root")
    };
    let out = disk.run(&["--keep-old-roots", "3"]);
    eprintln!("{}", stderr(&out));
    let err = assert_says(&out, 0, &["the default is now subvolume"]);
    let done = err
        .lines()
        .find(|l| l.contains("done: "))
        .unwrap_or_else(|| panic!("no done line:\n{err}"));
    assert!(done.contains("DELETED BEFORE its replacement"), "{done}");
    assert!(done.contains("retention could not keep it"), "{done}");
    assert_rolled_back_and_erased(&disk, &before, &old);
    assert_default_is_root(&disk);
}

/// `root` missing (a power cut in the last resort's window) on a filesystem still full, the
/// space held by a leftover: the run deletes the leftover first, waits for the kernel to
/// free it, and creates `root`.
#[test]
fn privileged_missing_root_on_a_full_filesystem_is_created() {
    let disk = layout!("full-missing", "300M");
    {
        let m = disk.mount();
        // The old root, swapped out by an interrupted run, holds the space.
        fs::rename(m.join("root"), m.join("root.btrfs-rollback-tmp")).unwrap();
        fill_filesystem(&m.join("root.btrfs-rollback-tmp"));
        // Snapshots of the blank inside it until a snapshot is refused too (what the run
        // needs to create `root`).
        let refused = (0..5000).any(|i| {
            !Command::new("btrfs")
                .args(["subvolume", "snapshot"])
                .arg(m.join("root-blank"))
                .arg(m.join(format!("root.btrfs-rollback-tmp/s{i}")))
                .output()
                .unwrap()
                .status
                .success()
        });
        assert!(refused, "snapshots never filled the filesystem");
        sh(&mut Command::new("sync"));
    }
    let out = disk.run(&[]);
    eprintln!("{}", stderr(&out));
    assert_says(&out, 0, &["making room by deleting leftovers"]);
    let m = disk.mount();
    let subs = m.subvolumes();
    assert!(subs.contains_key(Path::new("root")), "{subs:?}");
    assert!(
        !subs.contains_key(Path::new("root.btrfs-rollback-tmp")),
        "{subs:?}"
    );
    assert_eq!(
        fs::read_to_string(m.join("root/etc/machine-id.blank")).unwrap(),
        "from the blank\n"
    );
    assert_eq!(
        fs::read_to_string(m.join("persist/etc/ssh/key")).unwrap(),
        "secret\n"
    );
}

/// After a power cut in the last resort's window the default is at the blank (where the last
/// resort parks it when it follows `root`): the run that creates `root` moves it there. A
/// default of 5 (the admin's) is left as it is.
#[test]
fn privileged_missing_root_takes_the_default_back_from_the_blank() {
    privileged!();
    for (parked_at_blank, name) in [(true, "default-blank"), (false, "default-top")] {
        let disk = Disk::new(name);
        impermanence_layout(&disk);
        {
            let m = disk.mount();
            let target = if parked_at_blank {
                m.id("root-blank")
            } else {
                5
            };
            btrfs([
                "subvolume".to_string(),
                "set-default".to_string(),
                target.to_string(),
                m.path.display().to_string(),
            ]);
            // Where the last resort's window leaves it: no `root` (an old one elsewhere).
            fs::rename(m.join("root"), m.join("root.btrfs-rollback-tmp")).unwrap();
        }
        let out = disk.run(&[]);
        eprintln!("{}", stderr(&out));
        assert_exit(&out, 0);
        let m = disk.mount();
        let expected = if parked_at_blank { m.id("root") } else { 5 };
        assert_eq!(
            m.default_id(),
            expected,
            "parked at the blank: {parked_at_blank}"
        );
    }
}

/// With `--keep-old-roots 1`, an old root a user made too deep for deletion by id is kept, then
/// pruned like any other at the next run: the limit holds.
#[test]
fn privileged_kept_old_root_with_a_deep_path_is_pruned() {
    let disk = layout!("deep-kept");
    let old = deep_subvolume_of_a_user(&disk.mount(), false);
    assert_exit(&disk.run(&["--keep-old-roots", "1"]), 0);
    // Kept: one old root under old_roots/, the deep subvolume in it. A boot uses the fresh
    // root (roots that never served are not kept), and the next run prunes the deep one.
    fs::write(disk.mount().join("root/etc/booted"), "yes").unwrap();
    assert_says(
        &disk.run(&["--keep-old-roots", "1"]),
        0,
        &["pruned the old root"],
    );
    assert_erased(&disk, &old);
}
