//! Deciding what a rollback does, from what is on the disk. Pure: no system calls, so every
//! refusal and every order of steps is unit-tested.
//!
//! The order is what makes a rollback crash-safe: nothing is deleted before every check has
//! passed, `root` is only ever replaced by an atomic exchange with a complete snapshot, the old
//! root is deleted (or kept under `old_roots/`) only after that exchange is committed, and a
//! kept old root is only ever moved by rename, never copied or deleted until it is pruned.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use crate::names::{
    aside_id, aside_name, is_old_root_name, old_root_name, OLD_ROOTS, RETIRED_XATTR,
};
use crate::names::{quoted, Names};
use crate::subvolume::{Entry, Nested};

/// A name in the top-level volume and, if it is a subvolume, everything nested in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub entry: Entry,
    /// Nested subvolumes, children before parents. Empty unless `entry` is a subvolume.
    pub nested: Vec<Nested>,
    /// Creation time (seconds since the epoch), for subvolumes.
    pub created: i64,
    /// Whether the subvolume changed after it was created (generation > otransid). An
    /// unchanged leftover is a snapshot of the blank that never served as a root.
    pub modified: bool,
}

impl Slot {
    pub fn missing() -> Self {
        Slot {
            entry: Entry::Missing,
            nested: Vec::new(),
            created: 0,
            modified: false,
        }
    }

    pub fn id(&self) -> Option<u64> {
        match self.entry {
            Entry::Subvolume { id, .. } => Some(id),
            _ => None,
        }
    }

    fn contains_nested(&self, id: u64) -> bool {
        self.nested.iter().any(|n| n.id == id)
    }
}

/// A kept old root: `old_roots/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldRoot {
    pub name: OsString,
    pub id: u64,
    pub created: i64,
    pub nested: Vec<Nested>,
    /// When btrfs-rollback retired it (seconds since the epoch), read from its mark (see
    /// `RETIRED_XATTR`); `None` for a subvolume this tool did not put here, which is never
    /// pruned and does not count toward `--keep-old-roots`.
    pub retired: Option<i64>,
    /// The transid of the last change to its namespace (GET_SUBVOL_INFO `ctransid`): when it
    /// was last used as a system (files created, removed, renamed). Old roots are ranked by
    /// it, newest first, whatever the clock said and whatever their ids; reading a file in
    /// an old root (atime) does not move it.
    pub last_change: u64,
}

impl OldRoot {
    pub fn path(&self) -> PathBuf {
        Path::new(OLD_ROOTS).join(&self.name)
    }
}

/// Why an old root stays or goes at the next run with retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The most recently used one: never pruned.
    Newest,
    /// Within the limits; `rank` 1 is the newest.
    Kept { rank: usize },
    /// Past `--keep-old-roots`.
    TooMany { rank: usize, limit: u32 },
    /// Retired longer ago than `--keep-days`.
    TooOld { days: u32 },
    /// Not put there by btrfs-rollback (no mark, or a name not in its format): never pruned.
    NotOurs,
}

impl Verdict {
    pub fn prune(&self) -> bool {
        matches!(self, Verdict::TooMany { .. } | Verdict::TooOld { .. })
    }

    /// For `list` and the plan: why it stays or goes.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Newest => "kept: the most recently used".into(),
            Verdict::Kept { rank } => format!("kept: number {rank} by last use"),
            Verdict::TooMany { rank, limit } => {
                format!("to be pruned: number {rank} by last use, {limit} are kept")
            }
            Verdict::TooOld { days } => format!("to be pruned: retired more than {days} d ago"),
            Verdict::NotOurs => {
                "never pruned: not put here by btrfs-rollback (no mark or another name)".into()
            }
        }
    }

    pub fn key(&self) -> &'static str {
        match self {
            Verdict::Newest => "newest",
            Verdict::Kept { .. } => "kept",
            Verdict::TooMany { .. } => "too_many",
            Verdict::TooOld { .. } => "too_old",
            Verdict::NotOurs => "not_ours",
        }
    }
}

/// Judge old roots against `retention`: `fresh` are the ones this run keeps (the root it
/// replaces first), newer than any already kept; `kept` are those already in `old_roots/`.
/// Returns every old root with its verdict, newest first, then the ones that are not ours.
/// Ranking is by last use (`last_change`), so a restored root that served again is new, and
/// roots that never booted are not kept at all (see `Keeper::keep`).
pub fn judge<'a>(
    fresh: &'a [OldRoot],
    kept: &'a [OldRoot],
    retention: &Retention,
    now: i64,
) -> Vec<(&'a OldRoot, Verdict)> {
    let mut ours: Vec<&OldRoot> = kept
        .iter()
        .filter(|o| o.retired.is_some() && is_old_root_name(&o.name))
        .collect();
    ours.sort_by_key(|o| std::cmp::Reverse((o.last_change, o.id)));
    let mut out: Vec<(&OldRoot, Verdict)> = Vec::new();
    for (i, old) in fresh.iter().chain(ours).enumerate() {
        let rank = i + 1;
        let age = now.saturating_sub(old.retired.unwrap_or(now));
        let verdict = if i == 0 {
            Verdict::Newest
        } else if let Some(limit) = retention.count.filter(|&c| rank > c as usize) {
            Verdict::TooMany { rank, limit }
        } else if let Some(days) = retention.days.filter(|&d| age > i64::from(d) * 86_400) {
            Verdict::TooOld { days }
        } else {
            Verdict::Kept { rank }
        };
        out.push((old, verdict));
    }
    for old in kept {
        if !out.iter().any(|(o, _)| o.id == old.id) {
            out.push((old, Verdict::NotOurs));
        }
    }
    out
}

/// What `old_roots` is in the top-level volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldRootsDir {
    Missing,
    /// A directory or a subvolume: old roots can go in.
    Usable,
    Unusable(&'static str),
}

/// What the top-level volume holds, as far as a rollback cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub root: Slot,
    pub blank: Slot,
    /// A leftover of an interrupted run under the temporary name.
    pub temp: Slot,
    /// Leftovers set aside by earlier runs (`<temp>.<id>`), still to be dealt with.
    pub asides: Vec<(OsString, Slot)>,
    /// The default subvolume's id (`btrfs subvolume get-default`).
    pub default_id: u64,
    pub old_roots_dir: OldRootsDir,
    pub old_roots: Vec<OldRoot>,
    /// The id `btrfs-rollback restore` wrote to the restore marker, if there is one.
    pub restored: Option<u64>,
}

/// How long old roots are kept under `old_roots/` instead of being deleted. An old root is
/// pruned when it is past either limit; the newest one is never pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many.
    pub count: Option<u32>,
    /// Keep none older than this many days.
    pub days: Option<u32>,
}

impl Retention {
    pub fn enabled(&self) -> bool {
        self.count.is_some() || self.days.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Make the subvolume now called `root` the default one (the default follows `root`).
    DefaultToRoot,
    /// Rename a leftover under the temporary name to `<temp>.<id>`, out of the way of the
    /// swap; it is dealt with after the swap. Renaming cannot fail the way deleting can (a
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
    /// Move an old root (or a leftover that served as one) from `from` in the top-level
    /// volume to `old_roots/<to>`, with what is nested in it.
    KeepOld {
        from: OsString,
        id: u64,
        to: OsString,
    },
    /// Delete a kept old root past the retention limits.
    PruneOld { old: OldRoot },
    /// `root` is what `btrfs-rollback restore` put there: keep it this once.
    KeepRestored { id: u64 },
    /// Remove a restore marker that no longer applies.
    ClearRestoreMarker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

/// Decide the steps, or refuse with a message that says why and what to do. `now` is the
/// current time in seconds since the epoch (for the age of old roots).
pub fn plan(names: &Names, state: &State, retention: &Retention, now: i64) -> Result<Plan> {
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
            "the blank snapshot {blank} has subvolumes nested in it ({}); snapshots do not \
             include them, so the fresh root gets empty directories in their place",
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
    // A default subvolume inside what is about to be erased would block its deletion (the
    // kernel refuses to delete the default): the default follows `root` instead, in the same
    // commit as the swap, so that a plain `mount` keeps giving the system's root.
    let default = state.default_id;
    let default_nested = state.root.contains_nested(default);
    let default_in_leftover = state.temp.id() == Some(default)
        || state.temp.contains_nested(default)
        || state
            .asides
            .iter()
            .any(|(_, a)| a.id() == Some(default) || a.contains_nested(default));
    if default_nested || (default_in_leftover && state.temp.id() != Some(default)) {
        warnings.push(format!(
            "the default subvolume (ID {default}) is nested inside {}, which is about to be \
             erased; the default follows {root} instead",
            if default_nested {
                root.to_string()
            } else {
                "a leftover of an earlier run".to_string()
            }
        ));
    }
    // Whatever an earlier run could not delete is old data still on the disk: say so at every
    // run until it is gone (the steps below try again).
    for (name, slot) in
        std::iter::once((&names.temp, &state.temp)).chain(state.asides.iter().map(|(n, s)| (n, s)))
    {
        if let Some(id) = slot.id() {
            warnings.push(format!(
                "{} (ID {id}, subvolumes nested in it: {}), left over from an earlier run, is \
                 still on the disk{}",
                quoted(name),
                slot.nested.len(),
                if slot.modified {
                    ": it served as a root and may hold its files"
                } else {
                    ""
                }
            ));
        }
    }
    let keeping = retention.enabled();
    if let (true, OldRootsDir::Unusable(what)) = (keeping, state.old_roots_dir) {
        bail!(
            "{OLD_ROOTS:?} in the top-level volume is {what}, so old roots cannot be kept there; \
             move it out of the way and run again"
        );
    }

    let mut steps = Vec::new();
    let mut keeper = Keeper {
        taken: state.old_roots.iter().map(|o| o.name.clone()).collect(),
        kept: Vec::new(),
        keeping,
    };

    // A root that `btrfs-rollback restore` put in place is kept once; leftovers of earlier
    // runs are still dealt with, so that old data never outlives a boot silently.
    if let (Some(marked), Some(id)) = (state.restored, state.root.id()) {
        if marked == id {
            steps.push(Step::KeepRestored { id });
            keeper.leftover(names.temp.clone(), &state.temp, now, &mut steps);
            for (name, slot) in &state.asides {
                keeper.leftover(name.clone(), slot, now, &mut steps);
            }
            return Ok(Plan { steps, warnings });
        }
    }

    if state.restored.is_some() {
        steps.push(Step::ClearRestoreMarker);
    }
    let default_in_temp = default_in_leftover;
    match state.root.id() {
        None => {
            steps.push(Step::CreateRoot);
            // The default at the blank means it was following `root`: the last resort on a
            // full filesystem points it there while there is no `root` (a read-only blank is
            // no default an admin would choose). A default of 5 (the top level) is the
            // admin's and stays.
            if default_in_temp || state.blank.id() == Some(default) {
                steps.push(Step::DefaultToRoot);
            }
            keeper.leftover(names.temp.clone(), &state.temp, now, &mut steps);
        }
        Some(old) => {
            if let Some(id) = state.temp.id() {
                if default_in_temp {
                    steps.push(Step::DefaultToRoot);
                }
                steps.push(Step::SetAside { id });
            }
            // A default at the blank was parked there by the last resort (see above), whose
            // move back to a new `root` a power cut or a failure can have undone: it follows.
            let parked = state.blank.id() == Some(default);
            steps.push(Step::Swap {
                old,
                default_follows: default == old || default_nested || default_in_temp || parked,
            });
            // A root unchanged since it was made from the blank never served (a run was
            // interrupted, then run again before a boot): it is only a copy of the blank and
            // must not push out a root that did serve.
            if keeping && state.root.modified {
                keeper.keep(names.temp.clone(), &state.root, now, &mut steps);
            } else {
                steps.push(Step::DeleteOld {
                    id: old,
                    nested: state.root.nested.clone(),
                });
            }
            if let Some(id) = state.temp.id() {
                keeper.leftover(aside_name(names, id), &state.temp, now, &mut steps);
            }
        }
    }
    for (name, slot) in &state.asides {
        keeper.leftover(name.clone(), slot, now, &mut steps);
    }
    if keeping {
        for (old, verdict) in judge(&keeper.kept, &state.old_roots, retention, now) {
            if verdict.prune() {
                steps.push(Step::PruneOld { old: old.clone() });
            }
        }
    }
    Ok(Plan { steps, warnings })
}

/// Names and records old roots kept by one plan.
struct Keeper {
    taken: Vec<OsString>,
    kept: Vec<OldRoot>,
    keeping: bool,
}

impl Keeper {
    /// Keep the subvolume `from` under `old_roots/<its creation time>`.
    fn keep(&mut self, from: OsString, slot: &Slot, now: i64, steps: &mut Vec<Step>) {
        let Some(id) = slot.id() else { return };
        let to = old_root_name(slot.created, &self.taken);
        self.taken.push(to.clone());
        self.kept.push(OldRoot {
            name: to.clone(),
            id,
            created: slot.created,
            nested: slot.nested.clone(),
            retired: Some(now),
            last_change: u64::MAX,
        });
        steps.push(Step::KeepOld { from, id, to });
    }

    /// A leftover that served as a root is kept like an old root; one that did not (a fresh
    /// snapshot never swapped in, unchanged since) is only a copy of the blank.
    fn leftover(&mut self, name: OsString, slot: &Slot, now: i64, steps: &mut Vec<Step>) {
        let Some(id) = slot.id() else { return };
        if self.keeping && slot.modified {
            self.keep(name, slot, now, steps);
        } else {
            steps.push(Step::RemoveLeftover {
                name,
                id,
                nested: slot.nested.clone(),
            });
        }
    }
}

/// Test fixtures shared by the planner's and the renderer's tests: names, slots and a state.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use std::ffi::OsStr;
    use std::path::PathBuf;

    pub fn names() -> Names {
        Names::new(OsStr::new("root"), OsStr::new("root-blank")).unwrap()
    }

    pub fn sub(id: u64, readonly: bool) -> Slot {
        Slot {
            entry: Entry::Subvolume { id, readonly },
            nested: Vec::new(),
            created: 1_795_774_145,
            modified: true,
        }
    }

    pub fn nested(id: u64, parent: u64, path: &str) -> Nested {
        Nested {
            id,
            parent,
            path: PathBuf::from(path),
            readonly: false,
        }
    }

    /// ROOT 256 with two nested subvolumes, BLANK 257, no temp, no old roots.
    pub fn state() -> State {
        let mut root = sub(256, false);
        root.nested = vec![nested(300, 299, "root/a/b"), nested(299, 256, "root/a")];
        State {
            root,
            blank: sub(257, true),
            temp: Slot::missing(),
            asides: Vec::new(),
            default_id: 5,
            old_roots_dir: OldRootsDir::Missing,
            old_roots: Vec::new(),
            restored: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use std::ffi::OsStr;

    fn plan(names: &Names, state: &State) -> Result<Plan> {
        super::plan(names, state, &Retention::default(), NOW)
    }

    const NOW: i64 = 1_795_774_145;
    const DAY: i64 = 86_400;

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
            ..Slot::missing()
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

    /// A power cut in the last resort's window (default moved to the blank, no `root`): the
    /// default follows the created root again. A default of 5 set by the admin is left.
    #[test]
    fn missing_root_takes_the_default_back_from_the_blank_only() {
        let mut s = state();
        s.root = Slot::missing();
        s.default_id = s.blank.id().unwrap();
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps, vec![Step::CreateRoot, Step::DefaultToRoot]);
        s.default_id = 5;
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps, vec![Step::CreateRoot]);
    }

    /// The last resort parked the default at the blank, made a new `root`, and a power cut
    /// (or a failure) came before the default was moved to it: the next swap takes it along.
    #[test]
    fn a_default_parked_at_the_blank_follows_the_next_swap() {
        let mut s = state();
        s.default_id = s.blank.id().unwrap();
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], swap(256, true));
        s.default_id = 5;
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], swap(256, false));
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
    fn default_nested_in_a_leftover_follows_root() {
        let mut s = state();
        s.temp = sub(400, false);
        s.temp.nested = vec![nested(401, 400, "root.btrfs-rollback-tmp/x")];
        s.default_id = 401;
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], Step::DefaultToRoot);
        assert_eq!(p.steps[1], Step::SetAside { id: 400 });
        assert_eq!(p.steps[2], swap(256, true));
        assert!(p.warnings[0].contains("a leftover"), "{p:?}");
    }

    #[test]
    fn default_nested_in_root_follows_root() {
        let mut s = state();
        s.default_id = 300;
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], swap(256, true));
        assert!(
            p.warnings[0].contains("default subvolume (ID 300)"),
            "{p:?}"
        );
    }

    #[test]
    fn refuses_a_temporary_name_that_is_not_ours() {
        let mut s = state();
        s.temp.entry = Entry::Other("a regular file");
        let err = plan(&names(), &s).unwrap_err().to_string();
        assert!(err.contains("root.btrfs-rollback-tmp"), "{err}");
    }

    fn keep(count: Option<u32>, days: Option<u32>) -> Retention {
        Retention { count, days }
    }

    /// An old root this tool kept, retired `age_days` ago; last used in transaction `id`.
    fn old(id: u64, age_days: i64) -> OldRoot {
        OldRoot {
            name: old_root_name(NOW - age_days * DAY, &[]),
            id,
            created: NOW - age_days * DAY,
            nested: Vec::new(),
            retired: Some(NOW - age_days * DAY),
            last_change: id,
        }
    }

    fn pruned(p: &Plan) -> Vec<u64> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::PruneOld { old } => Some(old.id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn aside_names_round_trip() {
        let n = names();
        for id in [256, 257, 1 << 40, u64::MAX] {
            assert_eq!(aside_id(&n, &aside_name(&n, id)), Some(id));
        }
        for bad in [
            "root.btrfs-rollback-tmp",
            "root.btrfs-rollback-tmp.",
            "root.btrfs-rollback-tmp.0256",
            "root.btrfs-rollback-tmp.+256",
            "root.btrfs-rollback-tmp.256x",
            "root.btrfs-rollback-tmp.18446744073709551616",
            "other.btrfs-rollback-tmp.256",
        ] {
            assert_eq!(aside_id(&n, std::ffi::OsStr::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn old_root_names_are_times_and_never_collide() {
        assert_eq!(old_root_name(NOW, &[]), "2026-11-27_10-09-05");
        let taken = vec![
            OsString::from("2026-11-27_10-09-05"),
            OsString::from("2026-11-27_10-09-05.2"),
        ];
        assert_eq!(old_root_name(NOW, &taken), "2026-11-27_10-09-05.3");
        // A creation time before 1970 (a broken clock) still gives a name.
        assert_eq!(old_root_name(-5, &[]), "1970-01-01_00-00-00");
    }

    #[test]
    fn retention_keeps_the_old_root_instead_of_deleting_it() {
        let mut s = state();
        s.root.created = NOW - DAY;
        let p = super::plan(&names(), &s, &keep(Some(3), None), NOW).unwrap();
        assert_eq!(p.steps[0], swap(256, false));
        assert_eq!(
            p.steps[1],
            Step::KeepOld {
                from: "root.btrfs-rollback-tmp".into(),
                id: 256,
                to: old_root_name(NOW - DAY, &[]),
            }
        );
        assert_eq!(p.steps.len(), 2);
    }

    #[test]
    fn pruning_by_count_never_takes_the_newest() {
        let mut s = state();
        s.old_roots = vec![old(100, 3), old(110, 2), old(120, 1)];
        let p = super::plan(&names(), &s, &keep(Some(2), None), NOW).unwrap();
        // The old root kept now (256) is the newest; 120 is second; 110 and 100 go.
        assert_eq!(pruned(&p), vec![110, 100]);
        let p = super::plan(&names(), &s, &keep(Some(1), None), NOW).unwrap();
        assert_eq!(pruned(&p), vec![120, 110, 100]);
    }

    #[test]
    fn pruning_by_age_uses_retirement_time_but_never_takes_the_newest() {
        let mut s = state();
        s.root.created = NOW - 40 * DAY;
        s.old_roots = vec![old(100, 50), old(110, 10)];
        let p = super::plan(&names(), &s, &keep(None, Some(30)), NOW).unwrap();
        // 256 (the root being kept, 40 days old) is the newest by id: kept anyway.
        assert_eq!(pruned(&p), vec![100]);
    }

    #[test]
    fn clock_skew_neither_prunes_nor_reorders() {
        let mut s = state();
        // Retired "in the future" and, the clock since fixed, "long ago": order is by last
        // use (last_change), never by the clock.
        s.old_roots = vec![old(100, -400), old(110, 400)];
        let p = super::plan(&names(), &s, &keep(Some(2), Some(30)), NOW).unwrap();
        // 256 newest, 110 next (but 400 days old: pruned by age), 100 third (count).
        assert_eq!(pruned(&p), vec![110, 100]);
        let p = super::plan(&names(), &s, &keep(Some(5), None), NOW).unwrap();
        assert_eq!(pruned(&p), Vec::<u64>::new());
    }

    #[test]
    fn subvolumes_this_tool_did_not_keep_are_never_pruned_and_do_not_count() {
        let mut s = state();
        let mut backup = old(90, 300);
        backup.name = "my-backup".into();
        let mut unmarked = old(95, 200);
        unmarked.retired = None;
        let mut renamed = old(97, 200);
        renamed.name = "before-upgrade".into();
        s.old_roots = vec![backup, unmarked, renamed, old(100, 3), old(110, 2)];
        let p = super::plan(&names(), &s, &keep(Some(2), Some(30)), NOW).unwrap();
        // 256 newest, 110 second, 100 third: pruned. The three others stay.
        assert_eq!(pruned(&p), vec![100]);
        let verdicts = judge(&[], &s.old_roots, &keep(Some(2), Some(30)), NOW);
        let not_ours: Vec<u64> = verdicts
            .iter()
            .filter(|(_, v)| *v == Verdict::NotOurs)
            .map(|(o, _)| o.id)
            .collect();
        assert_eq!(not_ours, vec![90, 95, 97]);
    }

    #[test]
    fn old_roots_rank_by_last_use_so_a_restored_root_is_not_pruned_first() {
        let mut s = state();
        // 100 is the oldest subvolume, but it was restored and served until recently.
        let mut restored = old(100, 1);
        restored.last_change = 500;
        s.old_roots = vec![restored, old(110, 2), old(120, 3)];
        let p = super::plan(&names(), &s, &keep(Some(2), None), NOW).unwrap();
        assert_eq!(pruned(&p), vec![120, 110]);
    }

    #[test]
    fn a_root_that_never_served_is_deleted_not_kept() {
        let mut s = state();
        s.root.modified = false;
        s.old_roots = vec![old(110, 2)];
        let p = super::plan(&names(), &s, &keep(Some(1), None), NOW).unwrap();
        assert!(
            matches!(p.steps[1], Step::DeleteOld { id: 256, .. }),
            "{p:?}"
        );
        // It does not push out the root that did serve.
        assert_eq!(pruned(&p), Vec::<u64>::new());
    }

    #[test]
    fn old_root_names_are_recognised() {
        for good in [
            "2026-11-27_10-09-05",
            "2026-11-27_10-09-05.2",
            "1970-01-01_00-00-00.17",
        ] {
            assert!(is_old_root_name(OsStr::new(good)), "{good}");
        }
        for bad in [
            "my-backup",
            "2026-11-27_10-09-05.1",
            "2026-11-27_10-09-05.02",
            "2026-11-27_10-09-05.",
            "2026-11-27 10-09-05",
            "2026-11-27_10-09-05x",
            "2026-11-27_10-09-0",
        ] {
            assert!(!is_old_root_name(OsStr::new(bad)), "{bad}");
        }
        // Every name old_root_name gives is recognised.
        let taken = vec![OsString::from("2026-11-27_10-09-05")];
        assert!(is_old_root_name(&old_root_name(NOW, &taken)));
    }

    #[test]
    fn with_retention_leftovers_that_served_as_roots_are_kept() {
        let mut s = state();
        s.temp = sub(400, false);
        let mut fresh = sub(300, false);
        fresh.modified = false;
        s.asides = vec![("root.btrfs-rollback-tmp.300".into(), fresh)];
        let p = super::plan(&names(), &s, &keep(Some(10), None), NOW).unwrap();
        assert_eq!(p.steps[0], Step::SetAside { id: 400 });
        assert!(matches!(p.steps[2], Step::KeepOld { id: 256, .. }));
        assert!(matches!(p.steps[3], Step::KeepOld { id: 400, .. }));
        // Never swapped in, unchanged since: only a copy of the blank.
        assert!(matches!(p.steps[4], Step::RemoveLeftover { id: 300, .. }));
        // Two kept with the same creation time get distinct names.
        let names: Vec<_> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::KeepOld { to, .. } => Some(to.clone()),
                _ => None,
            })
            .collect();
        assert_ne!(names[0], names[1]);
    }

    #[test]
    fn old_roots_that_is_a_file_is_refused_only_when_keeping() {
        let mut s = state();
        s.old_roots_dir = OldRootsDir::Unusable("not a directory");
        assert!(plan(&names(), &s).is_ok());
        let err = super::plan(&names(), &s, &keep(Some(1), None), NOW).unwrap_err();
        assert!(err.to_string().contains("old_roots"), "{err}");
    }

    #[test]
    fn a_restored_root_is_kept_once() {
        let mut s = state();
        s.restored = Some(256);
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps, vec![Step::KeepRestored { id: 256 }]);
        // A marker for another subvolume (the exchange never happened) is stale.
        s.restored = Some(999);
        let p = plan(&names(), &s).unwrap();
        assert_eq!(p.steps[0], Step::ClearRestoreMarker);
        assert_eq!(p.steps[1], swap(256, false));
    }
}
