//! Fixtures for the privileged tests: a sparse image with a real btrfs on a loop device, laid
//! out like an impermanence install, and checks made with btrfs-progs and a fresh mount, never
//! with the code under test.
//!
//! The tests need root, loop devices and btrfs-progs. Outside CI they skip with a printed
//! reason; with `CI=true` a missing requirement fails the test. `BTRFS_ROLLBACK_KEEP_IMAGES=1`
//! keeps the images (their paths are printed) for a post-mortem.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Start a privileged test: returns from it (skips) outside CI when a requirement is missing,
/// and panics under CI=true. Use with `#[macro_use] mod common;`.
/// `privileged!()` names the test itself (the function it stands in).
#[allow(unused_macros)]
macro_rules! privileged {
    () => {
        privileged!(test_name!())
    };
    ($name:expr) => {
        if !crate::common::privileged($name) {
            return;
        }
    };
}

/// The name of the function this stands in (the test's name), without its module path.
#[allow(unused_macros)]
macro_rules! test_name {
    () => {{
        fn here() {}
        let path = std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        path.rsplit("::").next().unwrap_or(path)
    }};
}

/// The start of most privileged tests: skip (or fail under CI=true) as `privileged!()` does, then
/// a fresh disk named `label` with the impermanence layout (`impermanence_layout`). Evaluates to
/// the `Disk`; `Before::layout(&disk)` remembers it for `assert_rolled_back`.
/// `layout!("label", "300M")` makes the image that size (`Disk::sized`): a small one fills fast.
#[allow(unused_macros)]
macro_rules! layout {
    ($label:expr) => {
        layout!($label, crate::common::IMAGE_SIZE)
    };
    ($label:expr, $size:expr) => {{
        privileged!();
        let disk = crate::common::Disk::sized($label, $size, crate::common::MKFS_BTRFS);
        crate::common::impermanence_layout(&disk);
        disk
    }};
}

/// `layout!` and what the disk holds before the rollback (`Before::layout`):
/// `let (disk, before) = fixture!("label");` (or `fixture!("label", "300M")`).
#[allow(unused_macros)]
macro_rules! fixture {
    ($($arg:expr),+) => {{
        let disk = layout!($($arg),+);
        let before = crate::common::Before::layout(&disk);
        (disk, before)
    }};
}

/// The binary under test: `BTRFS_ROLLBACK_TEST_BIN` if set (scripts/test.sh points it at the
/// musl build, the one users ship), else the one cargo built for these tests.
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("BTRFS_ROLLBACK_TEST_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_btrfs-rollback").into())
}

/// The binary under test as a command, isolated from the machine's own configuration: on a
/// NixOS machine with the module, `/etc/btrfs-rollback.conf` would change its defaults.
pub fn bin_command() -> Command {
    let mut c = Command::new(bin());
    c.env("BTRFS_ROLLBACK_CONFIG", "/dev/null");
    c
}

/// Whether the privileged tests can run; if not, skip (or fail under CI=true).
pub fn privileged(test: &str) -> bool {
    let missing = missing_requirement();
    match missing {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: CI=true, so this privileged test must run, but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why} (set CI=true to make this a failure)");
            false
        }
    }
}

fn missing_requirement() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout);
    if uid.ok().as_deref() != Some(&b"0\n"[..]) {
        return Some("not running as root".into());
    }
    for tool in ["mkfs.btrfs", "btrfs", "losetup"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install btrfs-progs)"
            ));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing: no loop devices".into());
    }
    None
}

/// Run a command, panic with its output if it fails.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn btrfs<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    sh(Command::new("btrfs").args(args))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// How a test image is formatted as btrfs, and its size unless a test asks for another.
pub const MKFS_BTRFS: &[&str] = &["mkfs.btrfs", "-q", "-f"];
pub const IMAGE_SIZE: &str = "1G";

/// A sparse image with a btrfs filesystem, attached to a loop device.
pub struct Disk {
    pub dir: PathBuf,
    pub image: PathBuf,
    pub dev: PathBuf,
    keep: bool,
}

impl Disk {
    pub fn new(name: &str) -> Disk {
        Self::with_mkfs(name, MKFS_BTRFS)
    }

    /// An image formatted with another mkfs command (for the "not btrfs" tests), or none.
    pub fn with_mkfs(name: &str, mkfs: &[&str]) -> Disk {
        Self::sized(name, IMAGE_SIZE, mkfs)
    }

    /// An image of `size` (truncate's syntax), formatted with `mkfs`: small ones fill fast.
    pub fn sized(name: &str, size: &str, mkfs: &[&str]) -> Disk {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("privileged-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        sh(Command::new("truncate").arg("-s").arg(size).arg(&image));
        if let Some((cmd, args)) = mkfs.split_first() {
            sh(Command::new(cmd).args(args).arg(&image));
        }
        let dev = sh(Command::new("losetup").args(["-f", "--show"]).arg(&image));
        let keep = std::env::var_os("BTRFS_ROLLBACK_KEEP_IMAGES").is_some();
        Disk {
            dir,
            image,
            dev: PathBuf::from(dev.trim()),
            keep,
        }
    }

    /// A fresh mount of the top-level volume, for building fixtures and for checking.
    pub fn mount(&self) -> Mounted {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        self.mount_with("subvolid=5", &format!("check-{n}"))
    }

    /// A mount of the subvolume `subvol` alone (as a running system's `/`), at `name` in the
    /// disk's directory, for as long as it lives.
    pub fn mount_subvol(&self, subvol: &str, name: &str) -> Mounted {
        self.mount_with(&format!("subvol={subvol}"), name)
    }

    fn mount_with(&self, option: &str, name: &str) -> Mounted {
        let path = self.dir.join(name);
        fs::create_dir_all(&path).unwrap();
        sh(Command::new("mount")
            .args(["-t", "btrfs", "-o", option])
            .arg(&self.dev)
            .arg(&path));
        Mounted { path }
    }

    /// The mountpoint the binary is told to use.
    pub fn work_mountpoint(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Run the binary with `args` after `sub` (run/list), pointed at this disk.
    pub fn cmd(&self, sub: &str) -> Command {
        let mut c = bin_command();
        c.arg(sub)
            .arg("--device")
            .arg(&self.dev)
            .arg("--mountpoint")
            .arg(self.work_mountpoint())
            .arg("--wait")
            .arg("2")
            .env("RUST_LOG", "debug");
        c
    }

    /// Run the binary's `sub` command with `args` on this disk, to its end. Whatever it did, it
    /// must not leave its mountpoint mounted.
    pub fn output<I, S>(&self, sub: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.cmd(sub).args(args).output().unwrap();
        assert!(
            !is_mounted(&self.work_mountpoint()),
            "`{sub}` left {} mounted",
            self.work_mountpoint().display()
        );
        out
    }

    pub fn run(&self, extra: &[&str]) -> Output {
        self.output("run", extra)
    }

    /// Start `run` and SIGKILL it after `delay`, then unmount what it may have left mounted.
    /// Returns whether the kill landed before the binary finished.
    pub fn kill_run_after(&self, delay: Duration) -> bool {
        let mut child = self
            .cmd("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let killed = child.wait().unwrap().code().is_none();
        let _ = Command::new("umount").arg(self.work_mountpoint()).output();
        killed
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // A killed binary may have left its mount behind.
        let _ = Command::new("umount").arg(self.work_mountpoint()).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
        if self.keep {
            eprintln!("kept {}", self.image.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

pub struct Mounted {
    pub path: PathBuf,
}

impl Mounted {
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    pub fn subvol(&self, rel: impl AsRef<Path>) {
        btrfs(
            [
                OsStr::new("-q"),
                OsStr::new("subvolume"),
                OsStr::new("create"),
            ]
            .into_iter()
            .chain([self.join(rel).as_os_str()]),
        );
    }

    /// A snapshot of `from` at `to` (both relative to the top level), read-only if `ro`.
    pub fn snapshot(&self, from: impl AsRef<Path>, to: impl AsRef<Path>, ro: bool) {
        sh(Command::new("btrfs")
            .args(["subvolume", "snapshot"])
            .args(ro.then_some("-r"))
            .arg(self.join(from))
            .arg(self.join(to)));
    }

    pub fn set_ro(&self, rel: impl AsRef<Path>, ro: bool) {
        btrfs([
            OsStr::new("property"),
            OsStr::new("set"),
            OsStr::new("-ts"),
            self.join(rel).as_os_str(),
            OsStr::new("ro"),
            OsStr::new(if ro { "true" } else { "false" }),
        ]);
    }

    pub fn is_ro(&self, rel: impl AsRef<Path>) -> bool {
        let out = btrfs([
            OsStr::new("property"),
            OsStr::new("get"),
            OsStr::new("-ts"),
            self.join(rel).as_os_str(),
            OsStr::new("ro"),
        ]);
        out.trim() == "ro=true"
    }

    /// `btrfs subvolume list`: path (relative to the top level) → id.
    pub fn subvolumes(&self) -> BTreeMap<PathBuf, u64> {
        let out = Command::new("btrfs")
            .args(["subvolume", "list"])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(out.status.success());
        // "ID 257 gen 9 top level 5 path root-blank" — the path is the rest of the line.
        // Names with newlines are split across lines; join them back onto their entry.
        let mut map = BTreeMap::new();
        let mut last: Option<(PathBuf, u64)> = None;
        for line in out.stdout.split(|&b| b == b'\n') {
            if line.starts_with(b"ID ") {
                if let Some((p, id)) = last.take() {
                    map.insert(p, id);
                }
                let text = String::from_utf8_lossy(line);
                let id: u64 = text.split(' ').nth(1).unwrap().parse().unwrap();
                let at = find(line, b" path ").expect("path in subvolume list") + 6;
                last = Some((PathBuf::from(OsStr::from_bytes(&line[at..])), id));
            } else if let Some((p, _)) = last.as_mut() {
                if !line.is_empty() {
                    let mut joined = p.as_os_str().as_bytes().to_vec();
                    joined.push(b'\n');
                    joined.extend_from_slice(line);
                    *p = PathBuf::from(OsStr::from_bytes(&joined));
                }
            }
        }
        if let Some((p, id)) = last {
            map.insert(p, id);
        }
        map
    }

    /// The id of the subvolume at `rel`, by `btrfs inspect-internal rootid`.
    pub fn id(&self, rel: impl AsRef<Path>) -> u64 {
        btrfs([
            OsStr::new("inspect-internal"),
            OsStr::new("rootid"),
            self.join(rel).as_os_str(),
        ])
        .trim()
        .parse()
        .unwrap()
    }

    pub fn default_id(&self) -> u64 {
        let out = btrfs([
            OsStr::new("subvolume"),
            OsStr::new("get-default"),
            self.path.as_os_str(),
        ]);
        out.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Every file and directory below `rel`, with content, not descending into nested
    /// subvolumes (they are listed as such).
    pub fn tree(&self, rel: impl AsRef<Path>) -> BTreeMap<PathBuf, String> {
        let base = self.join(rel);
        let mut out = BTreeMap::new();
        walk(&base, &base, &mut out);
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(base).unwrap().to_path_buf();
        let meta = fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        use std::os::unix::fs::MetadataExt;
        if ft.is_symlink() {
            out.insert(rel, format!("link {:?}", fs::read_link(&path).unwrap()));
        } else if ft.is_dir() && meta.ino() == 256 {
            out.insert(rel, "subvolume".into());
        } else if ft.is_dir() {
            out.insert(rel, "dir".into());
            walk(base, &path, out);
        } else if ft.is_file() {
            out.insert(rel, format!("file {:?}", fs::read(&path).unwrap()));
        } else if ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
            out.insert(rel, "special".into());
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).output();
        let _ = fs::remove_dir(&self.path);
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = canon.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(&target))
}

/// What a test remembers of the disk before a rollback, to compare after.
pub struct Before {
    pub blank_id: u64,
    pub blank_tree: BTreeMap<PathBuf, String>,
    pub blank_ro: bool,
    /// Top-level siblings other than root, blank and their nested subvolumes: path → (id, tree).
    pub siblings: BTreeMap<PathBuf, (u64, BTreeMap<PathBuf, String>)>,
    pub log_len: u64,
}

/// The layout of an impermanence install: `root` with files and nested subvolumes three deep
/// (one read-only with a child), a read-only `root-blank` taken before, `persist` with files,
/// `nix`, `home`.
pub fn impermanence_layout(disk: &Disk) {
    let m = disk.mount();
    m.subvol("root");
    fs::create_dir_all(m.join("root/etc")).unwrap();
    fs::write(m.join("root/etc/machine-id.blank"), "from the blank\n").unwrap();
    fs::create_dir_all(m.join("root/var/lib")).unwrap();
    m.snapshot("root", "root-blank", true);
    m.subvol("persist");
    fs::create_dir_all(m.join("persist/etc/ssh")).unwrap();
    fs::write(m.join("persist/etc/ssh/key"), "secret\n").unwrap();
    m.subvol("nix");
    fs::create_dir_all(m.join("nix/store")).unwrap();
    fs::write(m.join("nix/store/pkg"), "store path\n").unwrap();
    m.subvol("home");
    fs::write(m.join("home/notes"), "mine\n").unwrap();
    // What a boot leaves in root: files, and nested subvolumes three deep.
    fs::write(m.join("root/etc/junk"), "written at run time\n").unwrap();
    fs::create_dir_all(m.join("root/tmp/deep")).unwrap();
    fs::write(m.join("root/tmp/deep/file"), "x").unwrap();
    m.subvol("root/var/lib/machines");
    m.subvol("root/var/lib/machines/a");
    m.subvol("root/var/lib/machines/a/b");
    m.subvol("root/var/lib/machines/a/b/c");
    fs::write(m.join("root/var/lib/machines/a/b/c/data"), "deep").unwrap();
    m.subvol("root/srv");
    m.subvol("root/srv/child");
    m.set_ro("root/srv", true);
}

impl Before {
    /// `take` for the default names, `root` and `root-blank`.
    pub fn layout(disk: &Disk) -> Before {
        Self::take(disk, "root", "root-blank")
    }

    pub fn take(disk: &Disk, root: &str, blank: &str) -> Before {
        let m = disk.mount();
        let subs = m.subvolumes();
        let mut siblings = BTreeMap::new();
        for (path, id) in &subs {
            let first = path.components().next().unwrap().as_os_str();
            if first == OsStr::new(root) || first == OsStr::new(blank) {
                continue;
            }
            siblings.insert(path.clone(), (*id, m.tree(path)));
        }
        Before {
            blank_id: m.id(blank),
            blank_tree: m.tree(blank),
            blank_ro: m.is_ro(blank),
            siblings,
            log_len: fs::metadata(m.join("rollback.log"))
                .map(|m| m.len())
                .unwrap_or(0),
        }
    }

    /// Everything a successful rollback promises, checked with btrfs-progs and a fresh mount.
    pub fn assert_rolled_back(&self, disk: &Disk, root: &str, blank: &str) {
        let m = disk.mount();
        let subs = m.subvolumes();
        assert!(subs.contains_key(Path::new(root)), "no {root:?}: {subs:?}");
        let nested: Vec<_> = subs
            .keys()
            .filter(|p| p.starts_with(root) && *p != Path::new(root))
            .collect();
        assert!(nested.is_empty(), "still nested under {root:?}: {nested:?}");
        assert!(!m.is_ro(root), "{root:?} is read-only");
        assert_eq!(
            m.tree(root),
            self.blank_tree,
            "{root:?} differs from the blank"
        );
        assert_eq!(m.id(blank), self.blank_id, "the blank changed id");
        assert_eq!(
            m.tree(blank),
            self.blank_tree,
            "the blank's content changed"
        );
        assert_eq!(
            m.is_ro(blank),
            self.blank_ro,
            "the blank's read-only flag changed"
        );
        for (path, (id, tree)) in &self.siblings {
            assert_eq!(
                subs.get(path),
                Some(id),
                "sibling {path:?} lost or changed id"
            );
            assert_eq!(&m.tree(path), tree, "sibling {path:?} changed content");
        }
        let expected: Vec<&Path> = self
            .siblings
            .keys()
            .map(PathBuf::as_path)
            .chain([Path::new(root), Path::new(blank)])
            .collect();
        let extra: Vec<_> = subs
            .keys()
            .filter(|p| !expected.contains(&p.as_path()))
            .collect();
        assert!(extra.is_empty(), "leftover subvolumes: {extra:?}");
    }

    pub fn assert_log_grew(&self, disk: &Disk) {
        let m = disk.mount();
        let len = fs::metadata(m.join("rollback.log")).unwrap().len();
        assert!(len > self.log_len, "rollback.log did not grow");
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status; stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

/// `assert_exit`, then each of `says` is in stderr. Returns stderr, for further checks.
pub fn assert_says(out: &Output, code: i32, says: &[&str]) -> String {
    assert_exit(out, code);
    let err = stderr(out);
    for s in says {
        assert!(err.contains(s), "{s:?} is not in stderr:\n{err}");
    }
    err
}

/// The old roots kept in `old_roots/`, by path, with their ids (btrfs-progs' view).
pub fn old_roots(disk: &Disk) -> Vec<(PathBuf, u64)> {
    disk.mount()
        .subvolumes()
        .into_iter()
        .filter(|(p, _)| p.starts_with("old_roots") && p.components().count() == 2)
        .collect()
}

/// The default subvolume is `root` (it followed `root` through the rollback).
pub fn assert_default_is_root(disk: &Disk) {
    let m = disk.mount();
    assert_eq!(
        m.default_id(),
        m.id("root"),
        "the default subvolume did not follow root"
    );
}

/// A run on `disk` as it is now exits 0 and keeps every promise of a rollback of `root` to
/// `root-blank` (`Before::assert_rolled_back`). Returns what the disk held before the run, for
/// more checks.
pub fn assert_a_run_rolls_back(disk: &Disk) -> Before {
    let before = Before::layout(disk);
    assert_exit(&disk.run(&[]), 0);
    before.assert_rolled_back(disk, "root", "root-blank");
    before
}

/// Parse JSON with python3's json module (an independent parser) and print `expr` of it (`d`
/// is the document). Returns what python printed, trimmed.
pub fn python_json(text: &[u8], expr: &str) -> String {
    use std::io::Write;
    let script = format!("import json,sys; d = json.load(sys.stdin); print({expr})");
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{expr} on:\n{}\n{}",
        String::from_utf8_lossy(text),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Create `n` subvolumes below `dir` (relative to the mount), a few levels deep.
pub fn create_many(m: &Mounted, dir: &str, n: usize) {
    fs::create_dir_all(m.join(dir)).unwrap();
    let mut script = String::from("set -e\n");
    for i in 0..n {
        let path = if i % 10 == 0 {
            format!("{dir}/s{i}")
        } else {
            format!("{dir}/s{}/s{i}", i - i % 10)
        };
        script.push_str(&format!(
            "btrfs -q subvolume create '{}'\n",
            m.join(path).display()
        ));
    }
    sh(Command::new("sh").arg("-c").arg(script));
}

/// How many SIGKILL rounds a kill test runs: `BTRFS_ROLLBACK_KILL_ROUNDS`, else `default`.
pub fn kill_rounds(default: u32) -> u32 {
    std::env::var("BTRFS_ROLLBACK_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A process in a mount namespace of its own (`unshare -m`, private propagation, so nothing
/// it mounts shows here) that runs `mounts` and then sleeps. Killed when dropped, also when
/// the test panics, which takes its namespace and mounts with it.
pub struct Holder {
    child: Child,
}

impl Holder {
    pub fn start(mounts: &str) -> Holder {
        // `exec`: the PID the refusal names is the one we hold.
        let script = format!("set -e\n{mounts}\necho ready\nexec sleep 600\n");
        let mut child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux)");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the process in another mount namespace did not mount:\n{mounts}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Holder { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its mount points, from its own mountinfo (not through the code under test).
    pub fn mount_points(&self) -> String {
        fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).unwrap()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mount -t btrfs -o OPTIONS DEVICE DIR` for a holder's script, `dir` created here first.
pub fn mount_line(options: &str, dev: &Path, dir: &Path) -> String {
    fs::create_dir_all(dir).unwrap();
    format!(
        "mount -t btrfs -o '{options}' '{}' '{}'",
        dev.display(),
        dir.display()
    )
}

/// The subvolumes are those of `before` but the old root at `old` and what was nested in it
/// (after `forget`): nothing else went, nothing came.
pub fn assert_only_gone(disk: &Disk, before: &BTreeMap<PathBuf, u64>, old: &Path) {
    let expected: BTreeMap<PathBuf, u64> = before
        .iter()
        .filter(|(p, _)| !p.starts_with(old))
        .map(|(p, id)| (p.clone(), *id))
        .collect();
    assert_eq!(disk.mount().subvolumes(), expected);
}
