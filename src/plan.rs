//! Deciding what a rollback does, from what is on the disk. Pure: no system calls, so every
//! refusal and every order of steps is unit-tested.
//!
//! The order is what makes a rollback crash-safe: nothing is deleted before every check has
//! passed, `root` is only ever replaced by an atomic exchange with a complete snapshot, and the
//! old root is deleted only after that exchange is committed.

use std::ffi::OsString;
use std::fmt::Write as _;

use anyhow::{bail, Result};

use crate::names::{quoted, Names};
use crate::subvolume::{Entry, Nested};

/// A name in the top-level volume and, if it is a subvolume, everything nested in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub entry: Entry,
    /// Nested subvolumes, children before parents. Empty unless `entry` is a subvolume.
    pub nested: Vec<Nested>,
}

impl Slot {
    pub fn missing() -> Self {
        Slot {
            entry: Entry::Missing,
            nested: Vec::new(),
        }
    }

    fn id(&self) -> Option<u64> {
        match self.entry {
            Entry::Subvolume { id, .. } => Some(id),
            _ => None,
        }
    }

    fn contains_nested(&self, id: u64) -> bool {
        self.nested.iter().any(|n| n.id == id)
    }
}

/// What the top-level volume holds, as far as a rollback cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub root: Slot,
    pub blank: Slot,
    /// A leftover of an interrupted run under the temporary name.
    pub temp: Slot,
    /// Leftovers set aside by earlier runs (`<temp>.<id>`), still to be deleted.
    pub asides: Vec<(OsString, Slot)>,
    /// The default subvolume's id (`btrfs subvolume get-default`).
    pub default_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the subvolume now called `root` the default one (the default follows `root`).
    DefaultToRoot,
    /// Rename a leftover under the temporary name to `<temp>.<id>`, out of the way of the
    /// swap; it is deleted after the swap. Renaming cannot fail the way deleting can (a
    /// nested subvolume too deep to delete must not block every future rollback).
    SetAside { id: u64 },
    /// `root` is missing: snapshot the blank as `root`.
    CreateRoot,
    /// Snapshot the blank under the temporary name, exchange it with `root`, make it the
    /// default if `default_follows`, and commit all of that in one transaction.
    Swap { old: u64, default_follows: bool },
    /// Delete the old root (now under the temporary name) and everything nested in it.
    DeleteOld { id: u64, nested: Vec<Nested> },
    /// Delete a leftover of an earlier run, by its name in the top-level volume.
    RemoveLeftover {
        name: OsString,
        id: u64,
        nested: Vec<Nested>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

/// The name a leftover with id `id` is set aside under: `<temp>.<id>`.
pub fn aside_name(names: &Names, id: u64) -> OsString {
    let mut name = names.temp.clone();
    name.push(format!(".{id}"));
    name
}

/// Decide the steps, or refuse with a message that says why and what to do.
pub fn plan(names: &Names, state: &State) -> Result<Plan> {
    let (root, blank, temp) = (
        quoted(&names.root),
        quoted(&names.blank),
        quoted(&names.temp),
    );
    let mut warnings = Vec::new();

    match state.blank.entry {
        Entry::Missing => bail!(
            "the blank snapshot {blank} does not exist in the top-level volume; \
             without it there is nothing to roll back to"
        ),
        Entry::Other(what) => bail!(
            "the blank snapshot {blank} is {what}: it must be a subvolume \
             (create it with `btrfs subvolume snapshot -r`)"
        ),
        Entry::Subvolume { readonly, .. } => {
            if !readonly {
                warnings.push(format!(
                    "the blank snapshot {blank} is writable: whatever is written to it appears \
                     in every fresh root; make it read-only with \
                     `btrfs property set -ts <top-level>/{} ro true`",
                    names.blank.to_string_lossy()
                ));
            }
        }
    }
    if !state.blank.nested.is_empty() {
        warnings.push(format!(
            "the blank snapshot {blank} has {} nested subvolume(s); snapshots do not include \
             them, so the fresh root gets empty directories in their place",
            state.blank.nested.len()
        ));
    }
    if let Entry::Other(what) = state.root.entry {
        bail!(
            "{root} is {what}: it must be a subvolume; move it out of the way \
             (for example rename it) and run again"
        );
    }
    if let Entry::Other(what) = state.temp.entry {
        bail!(
            "{temp}, the name this tool uses for its temporary snapshot, is {what}; \
             move it out of the way and run again"
        );
    }
    let default = state.default_id;
    if state.root.contains_nested(default) {
        bail!(
            "the default subvolume (ID {default}) is nested inside {root} and would be deleted; \
             make another subvolume the default (for example `btrfs subvolume set-default 5 \
             <top-level>`) and run again"
        );
    }
    if state.temp.contains_nested(default) {
        bail!(
            "the default subvolume (ID {default}) is nested inside {temp}, a leftover of an \
             interrupted rollback; make another subvolume the default and run again"
        );
    }

    let mut steps = Vec::new();
    let default_in_temp = state.temp.id() == Some(default);
    let asides = state.asides.iter().filter_map(|(name, slot)| {
        slot.id().map(|id| Step::RemoveLeftover {
            name: name.clone(),
            id,
            nested: slot.nested.clone(),
        })
    });
    match state.root.id() {
        None => {
            steps.push(Step::CreateRoot);
            if default_in_temp {
                steps.push(Step::DefaultToRoot);
            }
            if let Some(id) = state.temp.id() {
                steps.push(Step::RemoveLeftover {
                    name: names.temp.clone(),
                    id,
                    nested: state.temp.nested.clone(),
                });
            }
        }
        Some(old) => {
            if let Some(id) = state.temp.id() {
                if default_in_temp {
                    steps.push(Step::DefaultToRoot);
                }
                steps.push(Step::SetAside { id });
            }
            steps.push(Step::Swap {
                old,
                default_follows: default == old || default_in_temp,
            });
            steps.push(Step::DeleteOld {
                id: old,
                nested: state.root.nested.clone(),
            });
            if let Some(id) = state.temp.id() {
                steps.push(Step::RemoveLeftover {
                    name: aside_name(names, id),
                    id,
                    nested: state.temp.nested.clone(),
                });
            }
        }
    }
    steps.extend(asides);
    Ok(Plan { steps, warnings })
}

impl Plan {
    /// The plan as lines a person reads: each subvolume that would go, by path and id.
    pub fn describe(&self, names: &Names) -> String {
        let (root, blank, temp) = (
            quoted(&names.root),
            quoted(&names.blank),
            quoted(&names.temp),
        );
        let mut out = String::new();
        for step in &self.steps {
            match step {
                Step::DefaultToRoot => {
                    let _ = writeln!(out, "make {root} the default subvolume");
                }
                Step::SetAside { id } => {
                    let _ = writeln!(
                        out,
                        "rename {temp} (ID {id}), left over from an interrupted run, to {}",
                        quoted(&aside_name(names, *id))
                    );
                }
                Step::CreateRoot => {
                    let _ = writeln!(out, "{root} is missing: snapshot {blank} as {root}");
                }
                Step::Swap {
                    old,
                    default_follows,
                } => {
                    let default = if *default_follows {
                        ", make it the default subvolume"
                    } else {
                        ""
                    };
                    let _ = writeln!(
                        out,
                        "snapshot {blank} as {temp}, exchange it with {root} (ID {old}){default} \
                         and commit"
                    );
                }
                Step::DeleteOld { id, nested } => {
                    let _ = writeln!(
                        out,
                        "delete the old {root} (ID {id}) and {} subvolume(s) nested in it:",
                        nested.len()
                    );
                    list(&mut out, nested);
                }
                Step::RemoveLeftover { name, id, nested } => {
                    let _ = writeln!(
                        out,
                        "delete {} (ID {id}), left over from an earlier run, and {} subvolume(s) \
                         nested in it:",
                        quoted(name),
                        nested.len()
                    );
                    list(&mut out, nested);
                }
            }
        }
        out
    }
}

fn list(out: &mut String, nested: &[Nested]) {
    for n in nested {
        let ro = if n.readonly { ", read-only" } else { "" };
        let _ = writeln!(out, "    {} (ID {}{ro})", quoted(&n.path), n.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::path::PathBuf;

    fn names() -> Names {
        Names::new(OsStr::new("root"), OsStr::new("root-blank")).unwrap()
    }

    fn sub(id: u64, readonly: bool) -> Slot {
        Slot {
            entry: Entry::Subvolume { id, readonly },
            nested: Vec::new(),
        }
    }

    fn nested(id: u64, parent: u64, path: &str) -> Nested {
        Nested {
            id,
            parent,
            path: PathBuf::from(path),
            readonly: false,
        }
    }

    fn state() -> State {
        let mut root = sub(256, false);
        root.nested = vec![nested(300, 299, "root/a/b"), nested(299, 256, "root/a")];
        State {
            root,
            blank: sub(257, true),
            temp: Slot::missing(),
            asides: Vec::new(),
            default_id: 5,
        }
    }

    #[test]
    fn ordinary_rollback_swaps_then_deletes() {
        let p = plan(&names(), &state()).unwrap();
        assert_eq!(p.warnings, Vec::<String>::new());
        assert_eq!(p.steps.len(), 2);
        assert_eq!(
            p.steps[0],
            Step::Swap {
                old: 256,
                default_follows: false
            }
        );
        match &p.steps[1] {
            Step::DeleteOld { id: 256, nested } => assert_eq!(nested.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
        let text = p.describe(&names());
        assert!(text.contains("\"root/a/b\" (ID 300)"), "{text}");
    }

    #[test]
    fn refuses_without_blank_and_changes_nothing() {
        let mut s = state();
        s.blank = Slot::missing();
        let err = plan(&names(), &s).unwrap_err().to_string();
        assert!(err.contains("\"root-blank\" does not exist"), "{err}");
        s.blank.entry = Entry::Other("a plain directory, not a subvolume");
        let err = plan(&names(), &s).unwrap_err().to_string();
        assert!(err.contains("plain directory"), "{err}");
    }

    #[test]
    fn refuses_root_that_is_not_a_subvolume() {
        let mut s = state();
        s.root = Slot {
            entry: Entry::Other("a symbolic link"),
            nested: vec![],
        };
        let err = plan(&names(), &s).unwrap_err().to_string();
        assert!(err.contains("\"root\" is a symbolic link"), "{err}");
    }

    #[test]
    fn warns_about_a_writable_blank() {
        let mut s = state();
        s.blank = sub(257, false);
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.warnings.len(), 1);
        assert!(p.warnings[0].contains("writable"));
    }

    #[test]
    fn missing_root_is_created_from_the_blank() {
        let mut s = state();
        s.root = Slot::missing();
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps, vec![Step::CreateRoot]);
    }

    fn swap(old: u64, default_follows: bool) -> Step {
        Step::Swap {
            old,
            default_follows,
        }
    }

    #[test]
    fn leftover_is_set_aside_before_the_swap_and_deleted_after() {
        let mut s = state();
        s.temp = sub(400, false);
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], Step::SetAside { id: 400 });
        assert_eq!(p.steps[1], swap(256, false));
        assert!(matches!(p.steps[2], Step::DeleteOld { id: 256, .. }));
        match &p.steps[3] {
            Step::RemoveLeftover { name, id: 400, .. } => {
                assert_eq!(name, "root.btrfs-rollback-tmp.400")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn leftover_is_removed_after_creating_a_missing_root() {
        let mut s = state();
        s.root = Slot::missing();
        s.temp = sub(400, false);
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], Step::CreateRoot);
        assert!(matches!(p.steps[1], Step::RemoveLeftover { id: 400, .. }));
    }

    #[test]
    fn set_aside_leftovers_are_deleted_after_the_swap() {
        let mut s = state();
        s.asides = vec![("root.btrfs-rollback-tmp.300".into(), sub(300, false))];
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], swap(256, false));
        assert!(matches!(p.steps[2], Step::RemoveLeftover { id: 300, .. }));
    }

    #[test]
    fn default_follows_root_in_the_same_commit() {
        let mut s = state();
        s.default_id = 256;
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], swap(256, true));
        assert!(matches!(p.steps[1], Step::DeleteOld { .. }));
    }

    #[test]
    fn default_on_a_leftover_moves_before_it_is_set_aside() {
        let mut s = state();
        s.temp = sub(400, false);
        s.default_id = 400;
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], Step::DefaultToRoot);
        assert_eq!(p.steps[1], Step::SetAside { id: 400 });
        assert_eq!(p.steps[2], swap(256, true));
    }

    #[test]
    fn refuses_when_the_default_is_nested_in_root() {
        let mut s = state();
        s.default_id = 300;
        let err = plan(&names(), &s).unwrap_err().to_string();
        assert!(err.contains("default subvolume (ID 300)"), "{err}");
    }

    #[test]
    fn refuses_a_temporary_name_that_is_not_ours() {
        let mut s = state();
        s.temp.entry = Entry::Other("a regular file");
        let err = plan(&names(), &s).unwrap_err().to_string();
        assert!(err.contains("root.btrfs-rollback-tmp"), "{err}");
    }
}
