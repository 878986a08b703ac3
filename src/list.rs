//! `btrfs-rollback list`: a read-only view of what a rollback would see and do.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Result;

use crate::ioctl;
use crate::names::{quoted, Names};
use crate::plan::{self, Slot, State};
use crate::rollback::{self, Target};
use crate::subvolume::{self, Entry, TOP_LEVEL};

pub fn list(target: &Target, _json: bool) -> Result<()> {
    let (top, described) = rollback::open(target, true)?;
    let fs = top.fd();
    let names = &target.names;
    let mut out = String::new();
    let _ = writeln!(out, "device: {described}");

    let mut top_level = Vec::new();
    for (id, dirid, name) in subvolume::children(fs, TOP_LEVEL)? {
        let dir = match ioctl::ino_lookup(fs, TOP_LEVEL, dirid) {
            Ok((_, dir)) => dir,
            Err(e) => format!("<{e}>/").into_bytes(),
        };
        let mut path = PathBuf::from(OsStr::from_bytes(&dir));
        path.push(name);
        let readonly = subvolume::readonly(fs, id)?.unwrap_or(false);
        top_level.push((id, path, readonly));
    }
    top_level.sort_by_key(|(id, _, _)| *id);
    let _ = writeln!(out, "top-level subvolumes:");
    for (id, path, readonly) in &top_level {
        let ro = if *readonly { "  read-only" } else { "" };
        let _ = writeln!(out, "  ID {id:<6} {}{ro}", quoted(path));
    }

    let state = rollback::inspect(&top, names)?;
    let default = state.default_id;
    let default_name = top_level
        .iter()
        .find(|(id, _, _)| *id == default)
        .map(|(_, p, _)| quoted(p).to_string())
        .unwrap_or_else(|| {
            if default == TOP_LEVEL {
                "the top level".into()
            } else {
                "nested".into()
            }
        });
    let _ = writeln!(out, "default subvolume: ID {default} ({default_name})");
    describe_slot(&mut out, "root", &names.root, &state.root);
    describe_slot(&mut out, "blank", &names.blank, &state.blank);
    if state.temp.entry != Entry::Missing {
        describe_slot(&mut out, "leftover", &names.temp, &state.temp);
    }
    plan_section(&mut out, names, &state);
    print!("{out}");
    Ok(())
}

fn describe_slot(out: &mut String, role: &str, name: &OsStr, slot: &Slot) {
    match &slot.entry {
        Entry::Missing => {
            let _ = writeln!(out, "{role} {}: missing", quoted(name));
        }
        Entry::Other(what) => {
            let _ = writeln!(out, "{role} {}: {what}", quoted(name));
        }
        Entry::Subvolume { id, readonly } => {
            let ro = if *readonly { "read-only" } else { "writable" };
            let _ = writeln!(
                out,
                "{role} {} (ID {id}, {ro}): {} nested subvolume(s)",
                quoted(name),
                slot.nested.len()
            );
            // Sorted by path, parents before children.
            let mut nested: Vec<_> = slot.nested.iter().collect();
            nested.sort_by(|a, b| a.path.cmp(&b.path));
            for n in nested {
                let ro = if n.readonly { "  read-only" } else { "" };
                let _ = writeln!(out, "  ID {:<6} {}{ro}", n.id, quoted(&n.path));
            }
        }
    }
}

fn plan_section(out: &mut String, names: &Names, state: &State) {
    match plan::plan(names, state) {
        Ok(plan) => {
            let _ = writeln!(out, "`run` would:");
            for line in plan.describe(names).lines() {
                let _ = writeln!(out, "  {line}");
            }
            for warning in &plan.warnings {
                let _ = writeln!(out, "  warning: {warning}");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "`run` would refuse: {e:#}");
        }
    }
}
