//! Rendering, apart from deciding: the plan, slots, nested subvolumes and old roots as the lines
//! a person reads and as the JSON documents of `--json`. Every JSON shape written here is
//! documented in `docs/json.md`, and `tests/json.rs` checks the output against it.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;

use crate::json::Json;
use crate::names::{quoted, Names};
use crate::plan::{
    aside_name, judge, OldRoot, Plan, Retention, Slot, State, Step, Verdict, OLD_ROOTS,
};
use crate::subvolume::{Entry, Nested};

/// The `"version"` of every JSON document; raised when a field is renamed or removed.
pub const JSON_VERSION: i64 = 1;

pub use crate::names::count;

/// A JSON document: `version`, `command`, `device`, `description`, `root` and `blank` first
/// (every command has them), then the command's own fields.
pub fn document(
    command: &str,
    device: &Path,
    description: &str,
    root: Json,
    blank: Json,
    rest: Vec<(&'static str, Json)>,
) -> Json {
    let mut fields = vec![
        ("version", Json::Int(JSON_VERSION)),
        ("command", Json::str(command)),
        ("device", Json::path(device)),
        ("description", Json::str(description)),
        ("root", root),
        ("blank", blank),
    ];
    fields.extend(rest);
    Json::Object(fields)
}

/// `forget NAME --dry-run --json` and `restore NAME --dry-run --json`: the document around
/// the old root `old` as `list` shows it, then the command's own fields.
pub fn old_root_document(
    command: &str,
    device: &Path,
    description: &str,
    names: &Names,
    state: &State,
    old: &OldRoot,
    rest: Vec<(&'static str, Json)>,
) -> Json {
    let mut fields = vec![
        ("dry_run", Json::Bool(true)),
        (
            "old_root",
            lone_old_root_json(&state.old_roots, old, crate::clock::now()),
        ),
    ];
    fields.extend(rest);
    document(
        command,
        device,
        description,
        slot_json(&names.root, &state.root),
        slot_json(&names.blank, &state.blank),
        fields,
    )
}

/// `run --dry-run --json`: the document around the plan.
pub fn dry_run_json(
    device: &Path,
    description: &str,
    names: &Names,
    state: &State,
    plan: &Plan,
) -> Json {
    document(
        "run",
        device,
        description,
        slot_json(&names.root, &state.root),
        slot_json(&names.blank, &state.blank),
        vec![("dry_run", Json::Bool(true)), ("plan", plan.to_json(names))],
    )
}

/// A nested subvolume as JSON: `{"id": 260, "path": "root/var/lib/machines", "readonly": false}`,
/// the path relative to the top-level volume.
pub fn nested_json(n: &Nested) -> Json {
    Json::Object(vec![
        ("id", Json::id(n.id)),
        ("path", Json::path(&n.path)),
        ("readonly", Json::Bool(n.readonly)),
    ])
}

/// A list of nested subvolumes, children before parents.
pub fn nested_list_json(nested: &[Nested]) -> Json {
    Json::Array(nested.iter().map(nested_json).collect())
}

/// A name in the top level and what it is (a `Slot` in docs/json.md): `{"path", "state",
/// "id", "readonly", "created", "nested"}`, the last four null or empty unless a subvolume.
pub fn slot_json(path: &OsStr, slot: &Slot) -> Json {
    let (state, id, readonly, created) = match &slot.entry {
        Entry::Missing => ("missing", Json::Null, Json::Null, Json::Null),
        Entry::Other(what) => (*what, Json::Null, Json::Null, Json::Null),
        Entry::Subvolume { id, readonly } => (
            "subvolume",
            Json::id(*id),
            Json::Bool(*readonly),
            Json::Int(slot.created),
        ),
    };
    Json::Object(vec![
        ("path", Json::os(path)),
        ("state", Json::str(state)),
        ("id", id),
        ("readonly", readonly),
        ("created", created),
        ("nested", nested_list_json(&slot.nested)),
    ])
}

/// A name in the top level and what it is, as text: a line, then its nested subvolumes
/// sorted by path (parents before children).
pub fn slot_text(out: &mut String, role: &str, name: &OsStr, slot: &Slot) {
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
                "{role} {} (ID {id}, {ro}): {}",
                quoted(name),
                count(slot.nested.len(), "nested subvolume")
            );
            let mut nested: Vec<_> = slot.nested.iter().collect();
            nested.sort_by(|a, b| a.path.cmp(&b.path));
            for n in nested {
                subvolume_line(out, n.id, &n.path, n.readonly);
            }
        }
    }
}

/// One subvolume of a list in the text: `  ID <id> <path>`, then `  read-only` if it is.
pub fn subvolume_line(out: &mut String, id: u64, path: &Path, readonly: bool) {
    let ro = if readonly { "  read-only" } else { "" };
    let _ = writeln!(out, "  ID {id:<6} {}{ro}", quoted(path));
}

/// A kept old root as JSON (an `OldRoot` in docs/json.md).
pub fn old_root_json(o: &OldRoot, verdict: Verdict, now: i64) -> Json {
    Json::Object(vec![
        ("name", Json::os(&o.name)),
        ("path", Json::path(&o.path())),
        ("id", Json::id(o.id)),
        ("created", Json::Int(o.created)),
        ("age_seconds", Json::Int(now.saturating_sub(o.created))),
        ("retired", o.retired.map_or(Json::Null, Json::Int)),
        ("ours", Json::Bool(verdict != Verdict::NotOurs)),
        ("verdict", Json::str(verdict.key())),
        ("prune", Json::Bool(verdict.prune())),
        ("why", Json::str(verdict.describe())),
        ("nested", nested_list_json(&o.nested)),
    ])
}

/// One old root on its own (`forget`, `restore`), as an `OldRoot` the way `list` without
/// retention options shows it: `verdict` is its rank by last use (or `not_ours`), `prune` false.
/// `old_roots` are all the old roots (the rank is among them).
fn lone_old_root_json(old_roots: &[OldRoot], old: &OldRoot, now: i64) -> Json {
    let verdict = judge(&[], old_roots, &Retention::default(), now)
        .into_iter()
        .find(|(o, _)| o.id == old.id)
        .map_or(Verdict::NotOurs, |(_, v)| v);
    old_root_json(old, verdict, now)
}

/// A kept old root as one line of `list`.
pub fn old_root_text(out: &mut String, o: &OldRoot, verdict: Verdict, now: i64) {
    let _ = writeln!(
        out,
        "  {:<24} ID {:<6} {}, {}; {}",
        quoted(&o.name).to_string(),
        o.id,
        age(now.saturating_sub(o.created)),
        count(o.nested.len(), "nested subvolume"),
        verdict.describe()
    );
}

/// An age for people: "3 d 4 h old", "12 min old", or "created 2 h in the future".
pub fn age(seconds: i64) -> String {
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

/// `N subvolumes nested in it` followed by a colon and the list, or a full stop for none.
fn nested_text(out: &mut String, nested: &[Nested]) {
    if nested.is_empty() {
        out.push_str(".\n");
        return;
    }
    out.push_str(":\n");
    for n in nested {
        let ro = if n.readonly { ", read-only" } else { "" };
        let _ = writeln!(out, "    {} (ID {}{ro})", quoted(&n.path), n.id);
    }
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
                    let _ = write!(
                        out,
                        "delete the old {root} (ID {id}) and {} nested in it",
                        count(nested.len(), "subvolume")
                    );
                    nested_text(&mut out, nested);
                }
                Step::RemoveLeftover { name, id, nested } => {
                    let _ = write!(
                        out,
                        "delete {} (ID {id}), left over from an earlier run, and {} nested in it",
                        quoted(name),
                        count(nested.len(), "subvolume")
                    );
                    nested_text(&mut out, nested);
                }
                Step::KeepOld { from, id, to } => {
                    let _ = writeln!(
                        out,
                        "keep {} (ID {id}) as {}",
                        quoted(from),
                        quoted(&Path::new(OLD_ROOTS).join(to))
                    );
                }
                Step::PruneOld { old } => {
                    let _ = write!(
                        out,
                        "prune the old root {} (ID {}) and {} nested in it",
                        quoted(&old.path()),
                        old.id,
                        count(old.nested.len(), "subvolume")
                    );
                    nested_text(&mut out, &old.nested);
                }
                Step::KeepRestored { id } => {
                    let _ = writeln!(
                        out,
                        "keep {root} (ID {id}) this once: `btrfs-rollback restore` put it there"
                    );
                }
                Step::ClearRestoreMarker => {
                    let _ = writeln!(out, "remove the restore marker, which no longer applies");
                }
            }
        }
        out
    }

    /// The plan as JSON (a `Plan` in docs/json.md): `{"refused": null, "steps": [{"action":
    /// ..., ...}], "warnings": [...]}`. Paths are relative to the top-level volume.
    pub fn to_json(&self, names: &Names) -> Json {
        let steps = self.steps.iter().map(|s| step_json(s, names)).collect();
        Json::Object(vec![
            ("refused", Json::Null),
            ("steps", Json::Array(steps)),
            (
                "warnings",
                Json::Array(self.warnings.iter().map(Json::str).collect()),
            ),
        ])
    }
}

/// A plan that refuses, as JSON: the same shape as `Plan::to_json`, no steps.
pub fn refused_json(message: &str) -> Json {
    Json::Object(vec![
        ("refused", Json::str(message)),
        ("steps", Json::Array(Vec::new())),
        ("warnings", Json::Array(Vec::new())),
    ])
}

fn step_json(step: &Step, names: &Names) -> Json {
    let old_root = |name: &OsStr| Json::path(&Path::new(OLD_ROOTS).join(name));
    let (action, mut fields): (&str, Vec<(&'static str, Json)>) = match step {
        Step::DefaultToRoot => ("default_to_root", vec![]),
        Step::SetAside { id } => (
            "set_aside",
            vec![
                ("id", Json::id(*id)),
                ("from", Json::os(&names.temp)),
                ("to", Json::os(aside_name(names, *id))),
            ],
        ),
        Step::CreateRoot => ("create_root", vec![]),
        Step::Swap {
            old,
            default_follows,
        } => (
            "swap",
            vec![
                ("id", Json::id(*old)),
                ("default_follows", Json::Bool(*default_follows)),
            ],
        ),
        Step::DeleteOld { id, nested } => (
            "delete_old",
            vec![
                ("id", Json::id(*id)),
                ("path", Json::os(&names.root)),
                ("nested", nested_list_json(nested)),
            ],
        ),
        Step::RemoveLeftover { name, id, nested } => (
            "remove_leftover",
            vec![
                ("id", Json::id(*id)),
                ("path", Json::os(name)),
                ("nested", nested_list_json(nested)),
            ],
        ),
        Step::KeepOld { from, id, to } => (
            "keep_old",
            vec![
                ("id", Json::id(*id)),
                ("from", Json::os(from)),
                ("to", old_root(to)),
                ("name", Json::os(to)),
            ],
        ),
        Step::PruneOld { old } => (
            "prune_old",
            vec![
                ("id", Json::id(old.id)),
                ("path", Json::path(&old.path())),
                ("name", Json::os(&old.name)),
                ("created", Json::Int(old.created)),
                ("nested", nested_list_json(&old.nested)),
            ],
        ),
        Step::KeepRestored { id } => (
            "keep_restored",
            vec![("id", Json::id(*id)), ("path", Json::os(&names.root))],
        ),
        Step::ClearRestoreMarker => ("clear_restore_marker", vec![]),
    };
    fields.insert(0, ("action", Json::str(action)));
    Json::Object(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixtures::{self, names, sub};
    use crate::plan::{plan, Retention};

    fn state() -> State {
        State {
            temp: sub(400, false),
            ..fixtures::state()
        }
    }

    #[test]
    fn plan_text_lists_what_goes() {
        let p = plan(&names(), &state(), &Retention::default(), 0).unwrap();
        let text = p.describe(&names());
        assert!(
            text.contains("delete the old \"root\" (ID 256) and 2 subvolumes nested in it:\n"),
            "{text}"
        );
        assert!(text.contains("\"root/a/b\" (ID 300)"), "{text}");
        assert!(
            text.contains("left over from an earlier run, and 0 subvolumes nested in it.\n"),
            "{text}"
        );
    }

    #[test]
    fn plan_json_names_every_action() {
        let p = plan(&names(), &state(), &Retention::default(), 0).unwrap();
        let text = p.to_json(&names()).to_string_pretty();
        for action in ["set_aside", "swap", "delete_old", "remove_leftover"] {
            assert!(
                text.contains(&format!("\"action\": \"{action}\"")),
                "{text}"
            );
        }
        assert!(text.contains("\"path\": \"root/a/b\""), "{text}");
        assert!(text.contains("\"refused\": null"), "{text}");
    }

    #[test]
    fn counts_read_well() {
        assert_eq!(count(0, "subvolume"), "0 subvolumes");
        assert_eq!(count(1, "subvolume"), "1 subvolume");
        assert_eq!(count(2, "nested subvolume"), "2 nested subvolumes");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(59), "0 min old");
        assert_eq!(age(3 * 86_400 + 4 * 3600 + 5), "3 d 4 h old");
        assert_eq!(age(2 * 3600 + 60), "2 h 1 min old");
        assert_eq!(age(-7200), "created 2 h 0 min in the future (clock skew)");
    }
}
