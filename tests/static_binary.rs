//! The release binary must run in an initramfs with nothing else in it: no ELF interpreter,
//! no shared libraries. `scripts/test.sh` builds it first (the musl build, or the static glibc command in docs/development.md).

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
        "{} does not exist; build it with scripts/musl.sh or the static build command in docs/development.md",
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

/// A minimal little-endian ELF64 image with the program headers of a dynamic executable: a
/// PT_INTERP and a PT_DYNAMIC holding two DT_NEEDED entries and a DT_NULL.
fn synthetic_dynamic_elf() -> Vec<u8> {
    let (phoff, phentsize, phnum) = (64usize, 56usize, 2usize);
    let dyn_off = phoff + phentsize * phnum;
    let dynamic: [(u64, u64); 3] = [(DT_NEEDED, 1), (DT_NEEDED, 12), (0, 0)];
    let mut elf = vec![0u8; dyn_off + dynamic.len() * 16];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    elf[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&(phentsize as u16).to_le_bytes());
    elf[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
    let ph = |elf: &mut Vec<u8>, i: usize, kind: u32, off: usize, size: usize| {
        let at = phoff + i * phentsize;
        elf[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        elf[at + 8..at + 16].copy_from_slice(&(off as u64).to_le_bytes());
        elf[at + 32..at + 40].copy_from_slice(&(size as u64).to_le_bytes());
    };
    ph(&mut elf, 0, PT_INTERP, 0, 0);
    ph(&mut elf, 1, PT_DYNAMIC, dyn_off, dynamic.len() * 16);
    for (i, (tag, val)) in dynamic.iter().enumerate() {
        let at = dyn_off + i * 16;
        elf[at..at + 8].copy_from_slice(&tag.to_le_bytes());
        elf[at + 8..at + 16].copy_from_slice(&val.to_le_bytes());
    }
    elf
}

#[test]
fn elf_check_sees_a_dynamic_binary() {
    // The check itself must be able to fail. The test harness binary cannot serve as the
    // example: under nixpkgs' pkgsStatic (musl) it is static too. So a synthetic image.
    assert_eq!(elf_dependencies(&synthetic_dynamic_elf()), (true, 2));
}

#[test]
fn elf_check_sees_a_static_binary() {
    let mut elf = synthetic_dynamic_elf();
    // Turn both program headers into PT_NULL: what a static executable looks like to the check.
    for i in 0..2 {
        elf[64 + i * 56..64 + i * 56 + 4].copy_from_slice(&0u32.to_le_bytes());
    }
    assert_eq!(elf_dependencies(&elf), (false, 0));
}
