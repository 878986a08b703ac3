//! `btrfs-rollback list`: a read-only view of what a rollback would see and do.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Result;

use crate::inspect::inspect;
use crate::ioctl;
use crate::json::Json;
use crate::names::quoted;
use crate::plan::{self, nested_json, OldRoot, Retention, Slot};
use crate::session::{self, Target};
use crate::subvolume::{self, Entry, TOP_LEVEL};

/// A subvolume directly or indirectly in the top-level directory tree.
struct TopLevelSubvolume {
    id: u64,
    path: PathBuf,
    readonly: bool,
}

pub fn list(target: &Target, retention: &Retention, json: bool) -> Result<()> {
    let (top, described) = session::mount(target, true)?;
    let fs = top.fd();
    let names = &target.names;

    let mut top_level = Vec::new();
    for (id, dirid, name) in subvolume::children(fs, TOP_LEVEL)? {
        let dir = match ioctl::ino_lookup(fs, TOP_LEVEL, dirid) {
            Ok((_, dir)) => dir,
            Err(e) => format!("<{e}>/").into_bytes(),
        };
        let mut path = PathBuf::from(OsStr::from_bytes(&dir));
        path.push(name);
        let readonly = subvolume::readonly(fs, id)?.unwrap_or(false);
        top_level.push(TopLevelSubvolume { id, path, readonly });
    }
    top_level.sort_by_key(|s| s.id);
    let state = inspect(&top, names)?;
    let now = crate::clock::now();
    let plan = plan::plan(names, &state, retention, now);
    // Why each old root stays or goes at the next run with these limits.
    // The roots that run keeps first (the plan's KeepOld steps) are newer than all of these.
    let fresh: Vec<OldRoot> = plan
        .as_ref()
        .map(|p| {
            p.steps
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
                .collect()
        })
        .unwrap_or_default();
    let verdicts: Vec<_> = plan::judge(&fresh, &state.old_roots, retention, now)
        .into_iter()
        .filter(|(o, _)| !fresh.iter().any(|f| f.id == o.id))
        .collect();
    let verdict = |o: &OldRoot| {
        verdicts
            .iter()
            .find(|(v, _)| v.id == o.id)
            .map(|(_, v)| *v)
            .unwrap_or(plan::Verdict::NotOurs)
    };
    if json {
        let plan = match &plan {
            Ok(plan) => plan.to_json(names),
            Err(e) => Json::Object(vec![("refused", Json::str(format!("{e:#}")))]),
        };
        let doc = Json::Object(vec![
            ("device", Json::path(&target.device)),
            ("description", Json::str(described)),
            (
                "top_level",
                Json::Array(
                    top_level
                        .iter()
                        .map(|s| {
                            Json::Object(vec![
                                ("id", Json::id(s.id)),
                                ("path", Json::path(&s.path)),
                                ("readonly", Json::Bool(s.readonly)),
                            ])
                        })
                        .collect(),
                ),
            ),
            ("default_id", Json::id(state.default_id)),
            ("root", slot_json(&names.root, &state.root)),
            ("blank", slot_json(&names.blank, &state.blank)),
            (
                "leftovers",
                Json::Array(
                    std::iter::once((&names.temp, &state.temp))
                        .chain(state.asides.iter().map(|(n, s)| (n, s)))
                        .filter(|(_, s)| s.entry != Entry::Missing)
                        .map(|(n, s)| slot_json(n, s))
                        .collect(),
                ),
            ),
            (
                "old_roots",
                Json::Array(
                    state
                        .old_roots
                        .iter()
                        .map(|o| old_root_json(o, verdict(o), now))
                        .collect(),
                ),
            ),
            ("plan", plan),
        ]);
        print!("{}", doc.to_string_pretty());
        return Ok(());
    }

    let mut out = String::new();
    let _ = writeln!(out, "device: {described}");
    let _ = writeln!(out, "top-level subvolumes:");
    for s in &top_level {
        let ro = if s.readonly { "  read-only" } else { "" };
        let _ = writeln!(out, "  ID {:<6} {}{ro}", s.id, quoted(&s.path));
    }
    let default = state.default_id;
    let default_name = top_level
        .iter()
        .find(|s| s.id == default)
        .map(|s| quoted(&s.path).to_string())
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
    for (name, slot) in &state.asides {
        describe_slot(&mut out, "leftover", name, slot);
    }
    if !state.old_roots.is_empty() {
        let _ = writeln!(
            out,
            "old roots ({} in {:?}, most recently used first; `restore NAME` brings one back; \
             {}):",
            state.old_roots.len(),
            plan::OLD_ROOTS,
            limits(retention)
        );
        for (o, v) in &verdicts {
            let v = *v;
            let _ = writeln!(
                out,
                "  {:<24} ID {:<6} {}, {} nested subvolume(s); {}",
                quoted(&o.name).to_string(),
                o.id,
                age(now - o.created),
                o.nested.len(),
                v.describe()
            );
        }
    }
    match plan {
        Ok(plan) => {
            let _ = writeln!(out, "`run` would ({}):", limits(retention));
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

/// `{"name", "state": "missing"|"subvolume"|<what it is>, "id", "readonly", "nested": [...]}`
fn slot_json(name: &OsStr, slot: &Slot) -> Json {
    let mut fields = vec![("name", Json::os(name))];
    match &slot.entry {
        Entry::Missing => fields.push(("state", Json::str("missing"))),
        Entry::Other(what) => fields.push(("state", Json::str(*what))),
        Entry::Subvolume { id, readonly } => {
            fields.push(("state", Json::str("subvolume")));
            fields.push(("id", Json::id(*id)));
            fields.push(("readonly", Json::Bool(*readonly)));
            fields.push(("created", Json::Int(slot.created)));
            fields.push((
                "nested",
                Json::Array(slot.nested.iter().map(nested_json).collect()),
            ));
        }
    }
    Json::Object(fields)
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

/// `{"name", "id", "created", "age_seconds", "retired", "ours", "verdict", "why", "nested"}`
fn old_root_json(o: &OldRoot, verdict: plan::Verdict, now: i64) -> Json {
    Json::Object(vec![
        ("name", Json::os(&o.name)),
        ("id", Json::id(o.id)),
        ("created", Json::Int(o.created)),
        ("age_seconds", Json::Int(now - o.created)),
        ("retired", o.retired.map_or(Json::Null, Json::Int)),
        ("ours", Json::Bool(verdict != plan::Verdict::NotOurs)),
        ("verdict", Json::str(verdict.key())),
        ("prune", Json::Bool(verdict.prune())),
        ("why", Json::str(verdict.describe())),
        (
            "nested",
            Json::Array(o.nested.iter().map(nested_json).collect()),
        ),
    ])
}

/// An age for people: "3 d 4 h old", "12 min old", or "created 2 h in the future".
fn age(seconds: i64) -> String {
    let (future, s) = (seconds < 0, seconds.unsigned_abs());
    let text = match s {
        s if s >= 86_400 => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} min", s / 60),
    };
    if future {
        format!("created {text} in the future (clock skew)")
    } else {
        format!("{text} old")
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_well() {
        assert_eq!(age(59), "0 min old");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 5), "3 d 4 h old");
        assert_eq!(age(2 * 3600 + 60), "2 h 1 min old");
        assert_eq!(age(-7200), "created 2 h 0 min in the future (clock skew)");
    }
}
