//! `btrfs-rollback list`: a read-only view of what a rollback would see and do, as a value
//! (`Listing`) read once and then rendered as text or JSON.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Result;

use crate::inspect::inspect;
use crate::ioctl;
use crate::json::Json;
use crate::names::{quoted, Names};
use crate::plan::{self, OldRoot, Plan, Retention, State, Verdict};
use crate::render;
use crate::session::{Session, Target};
use crate::subvolume::{self, Entry, TOP_LEVEL};

/// `btrfs-rollback list`.
pub fn list(session: &Session, target: &Target, retention: &Retention, json: bool) -> Result<()> {
    let listing = Listing::read(session, target, retention)?;
    let out = if json {
        listing.json().to_string_pretty()
    } else {
        listing.text()
    };
    print!("{out}");
    Ok(())
}

/// A subvolume directly or indirectly in the top-level directory tree.
pub struct TopLevelSubvolume {
    pub id: u64,
    pub path: PathBuf,
    pub readonly: bool,
}

/// What `list` shows: the top level, the state a rollback sees, and what it would do.
pub struct Listing {
    pub device: PathBuf,
    pub description: String,
    pub names: Names,
    pub retention: Retention,
    pub now: i64,
    /// Every subvolume whose parent is the top level, by id.
    pub top_level: Vec<TopLevelSubvolume>,
    pub state: State,
    /// The plan of a `run` with `retention`, or why it would refuse.
    pub plan: std::result::Result<Plan, String>,
    /// The old roots already kept, each with why it stays or goes at that run.
    pub verdicts: Vec<(OldRoot, Verdict)>,
}

impl Listing {
    /// Read the top level of `session` (mounted read-only).
    pub fn read(session: &Session, target: &Target, retention: &Retention) -> Result<Listing> {
        let top_level = top_level(session.fd())?;
        let state = inspect(session.top(), &target.names)?;
        let now = crate::clock::now();
        let plan = plan::plan(&target.names, &state, retention, now).map_err(|e| format!("{e:#}"));
        let verdicts = verdicts(&state, plan.as_ref().ok(), retention, now);
        Ok(Listing {
            device: target.device.clone(),
            description: session.described().to_owned(),
            names: target.names.clone(),
            retention: *retention,
            now,
            top_level,
            state,
            plan,
            verdicts,
        })
    }

    pub fn text(&self) -> String {
        let (names, state) = (&self.names, &self.state);
        let mut out = String::new();
        let _ = writeln!(out, "device: {}", self.description);
        let _ = writeln!(out, "top-level subvolumes:");
        for s in &self.top_level {
            render::subvolume_line(&mut out, s.id, &s.path, s.readonly);
        }
        let _ = writeln!(
            out,
            "default subvolume: ID {} ({})",
            state.default_id,
            self.default_name()
        );
        render::slot_text(&mut out, "root", &names.root, &state.root);
        render::slot_text(&mut out, "blank", &names.blank, &state.blank);
        for (name, slot) in self.leftovers() {
            render::slot_text(&mut out, "leftover", name, slot);
        }
        if !self.verdicts.is_empty() {
            let _ = writeln!(
                out,
                "old roots ({} in {:?}, most recently used first; `restore NAME` brings one \
                 back; {}):",
                self.verdicts.len(),
                plan::OLD_ROOTS,
                limits(&self.retention)
            );
            for (o, v) in &self.verdicts {
                render::old_root_text(&mut out, o, *v, self.now);
            }
        }
        match &self.plan {
            Ok(plan) => {
                let _ = writeln!(out, "`run` would ({}):", limits(&self.retention));
                for line in plan.describe(names).lines() {
                    let _ = writeln!(out, "  {line}");
                }
                for warning in &plan.warnings {
                    let _ = writeln!(out, "  warning: {warning}");
                }
            }
            Err(e) => {
                let _ = writeln!(out, "`run` would refuse: {e}");
            }
        }
        out
    }

    /// The `list` document of docs/json.md.
    pub fn json(&self) -> Json {
        let (names, state) = (&self.names, &self.state);
        let top_level = self
            .top_level
            .iter()
            .map(|s| {
                Json::Object(vec![
                    ("id", Json::id(s.id)),
                    ("path", Json::path(&s.path)),
                    ("readonly", Json::Bool(s.readonly)),
                ])
            })
            .collect();
        let leftovers = self
            .leftovers()
            .map(|(n, s)| render::slot_json(n, s))
            .collect();
        let old_roots = self
            .verdicts
            .iter()
            .map(|(o, v)| render::old_root_json(o, *v, self.now))
            .collect();
        let plan = match &self.plan {
            Ok(plan) => plan.to_json(names),
            Err(e) => render::refused_json(e),
        };
        render::document(
            "list",
            &self.device,
            &self.description,
            render::slot_json(&names.root, &state.root),
            render::slot_json(&names.blank, &state.blank),
            vec![
                ("default_id", Json::id(state.default_id)),
                ("top_level", Json::Array(top_level)),
                ("leftovers", Json::Array(leftovers)),
                ("old_roots", Json::Array(old_roots)),
                ("plan", plan),
            ],
        )
    }

    /// Leftovers of earlier runs: the temporary name, then the set-aside ones.
    fn leftovers(&self) -> impl Iterator<Item = (&OsStr, &plan::Slot)> {
        let state = &self.state;
        std::iter::once((self.names.temp.as_os_str(), &state.temp))
            .filter(|(_, s)| s.entry != Entry::Missing)
            .chain(state.asides.iter().map(|(n, s)| (n.as_os_str(), s)))
    }

    /// The default subvolume in words: its path in the top level, or where it is.
    fn default_name(&self) -> String {
        let default = self.state.default_id;
        match self.top_level.iter().find(|s| s.id == default) {
            Some(s) => quoted(&s.path).to_string(),
            None if default == TOP_LEVEL => "the top level".into(),
            None => "nested".into(),
        }
    }
}

/// The subvolumes whose parent is the top level, by id, with their paths in it.
fn top_level(fs: std::os::fd::BorrowedFd<'_>) -> Result<Vec<TopLevelSubvolume>> {
    let mut out = Vec::new();
    for (id, dirid, name) in subvolume::children(fs, TOP_LEVEL)? {
        let dir = match ioctl::ino_lookup(fs, TOP_LEVEL, dirid) {
            Ok((_, dir)) => dir,
            Err(e) => format!("<{e}>/").into_bytes(),
        };
        let mut path = PathBuf::from(OsStr::from_bytes(&dir));
        path.push(name);
        let readonly = subvolume::readonly(fs, id)?.unwrap_or(false);
        out.push(TopLevelSubvolume { id, path, readonly });
    }
    out.sort_by_key(|s| s.id);
    Ok(out)
}

/// Why each kept old root stays or goes at the next run with `retention`, most recently used
/// first. The roots that run keeps first (the plan's `KeepOld` steps) are newer than all of
/// these, so they take the first ranks.
fn verdicts(
    state: &State,
    plan: Option<&Plan>,
    retention: &Retention,
    now: i64,
) -> Vec<(OldRoot, Verdict)> {
    let fresh: Vec<OldRoot> = plan
        .map(|p| p.steps.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| match s {
            plan::Step::KeepOld { id, to, .. } => Some(OldRoot {
                name: to.clone(),
                id: *id,
                created: now,
                nested: Vec::new(),
                retired: Some(now),
                last_change: u64::MAX,
            }),
            _ => None,
        })
        .collect();
    plan::judge(&fresh, &state.old_roots, retention, now)
        .into_iter()
        .filter(|(o, _)| !fresh.iter().any(|f| f.id == o.id))
        .map(|(o, v)| (o.clone(), v))
        .collect()
}

/// The retention limits in words, for the headings.
fn limits(retention: &Retention) -> String {
    match (retention.count, retention.days) {
        (None, None) => "with no --keep-old-roots/--keep-days, old roots are deleted".into(),
        (Some(n), None) => format!("with --keep-old-roots {n}"),
        (None, Some(d)) => format!("with --keep-days {d}"),
        (Some(n), Some(d)) => format!("with --keep-old-roots {n} --keep-days {d}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_well() {
        assert!(limits(&Retention::default()).contains("deleted"));
        assert_eq!(
            limits(&Retention {
                count: Some(2),
                days: Some(3)
            }),
            "with --keep-old-roots 2 --keep-days 3"
        );
    }
}
