//! The release binary must run in an initramfs with nothing else in it: no ELF interpreter,
//! no shared libraries. `.ci/run` builds it first with the command from README.md.

use std::path::PathBuf;
use std::process::Command;

const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;
const DT_NEEDED: u64 = 1;

fn static_binary() -> Option<PathBuf> {
    let path = std::env::var_os("BTRFS_ROLLBACK_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-unknown-linux-gnu/release/btrfs-rollback")
        });
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "{} does not exist; build it with the static build command in README.md",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true: {why}");
    }
    eprintln!("SKIPPED static_binary_is_self_contained: {why}");
    None
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (has an interpreter, number of DT_NEEDED entries) of a little-endian ELF64 file.
fn elf_dependencies(elf: &[u8]) -> (bool, usize) {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    assert_eq!(elf[5], 1, "not little-endian");
    let (phoff, phentsize, phnum) = (
        u64_at(elf, 0x20) as usize,
        u16_at(elf, 0x36) as usize,
        u16_at(elf, 0x38) as usize,
    );
    let mut interp = false;
    let mut needed = 0;
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..];
        match u32_at(ph, 0) {
            PT_INTERP => interp = true,
            PT_DYNAMIC => {
                let (off, size) = (u64_at(ph, 8) as usize, u64_at(ph, 32) as usize);
                needed += elf[off..off + size]
                    .chunks_exact(16)
                    .filter(|d| u64_at(d, 0) == DT_NEEDED)
                    .count();
            }
            _ => {}
        }
    }
    (interp, needed)
}

#[test]
fn static_binary_is_self_contained() {
    let Some(path) = static_binary() else { return };
    let elf = std::fs::read(&path).unwrap();
    let (interp, needed) = elf_dependencies(&elf);
    assert!(!interp, "{} asks for an ELF interpreter", path.display());
    assert_eq!(needed, 0, "{} needs shared libraries", path.display());
    let out = Command::new(&path).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("btrfs-rollback "));
}

#[test]
fn elf_check_sees_a_dynamic_binary() {
    // The check itself must be able to fail: the test harness binary is dynamically linked.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let (interp, needed) = elf_dependencies(&me);
    assert!(
        interp && needed > 0,
        "the ELF check found no interpreter in a dynamic binary"
    );
}
