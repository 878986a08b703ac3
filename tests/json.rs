//! The JSON documents against their one description, `docs/json.md`: its `schema` blocks are
//! parsed here, and every field of the real output of `list`, `run --dry-run`, `diff`,
//! `forget --dry-run`, `restore --dry-run` and of errors (on real btrfs, privileged) and of the
//! examples in the file is checked against them. An
//! undocumented key, a missing one or another type fails.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Output;

use serde_json::Value;

use common::*;

/// A type in a schema block.
#[derive(Debug, Clone)]
enum Ty {
    Number,
    String,
    Bool,
    Null,
    Literal(Value),
    List(Box<Ty>),
    Named(String),
    Either(Vec<Ty>),
}

#[derive(Debug)]
enum Block {
    /// `key: type` lines; `true` for `key?:`.
    Object(Vec<(String, bool, Ty)>),
    /// `= A | B | ...`
    Choice(Vec<String>),
}

struct Schema {
    blocks: BTreeMap<String, Block>,
    /// The ```json NAME examples, with the line they start on.
    examples: Vec<(String, usize, String)>,
}

/// Split at `sep` outside brackets.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_type(s: &str) -> Ty {
    let alternatives: Vec<Ty> = split_top(s, '|')
        .into_iter()
        .map(|a| {
            let a = a.trim();
            match a {
                "number" => Ty::Number,
                "string" => Ty::String,
                "bool" => Ty::Bool,
                "null" => Ty::Null,
                _ if a.starts_with('[') && a.ends_with(']') => {
                    Ty::List(Box::new(parse_type(&a[1..a.len() - 1])))
                }
                _ if a.starts_with('"')
                    || a == "true"
                    || a == "false"
                    || a.parse::<i64>().is_ok() =>
                {
                    Ty::Literal(serde_json::from_str(a).unwrap_or_else(|e| panic!("{a}: {e}")))
                }
                _ => {
                    assert!(
                        a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !a.is_empty(),
                        "docs/json.md: not a type: {a:?}"
                    );
                    Ty::Named(a.to_string())
                }
            }
        })
        .collect();
    if alternatives.len() == 1 {
        alternatives.into_iter().next().unwrap()
    } else {
        Ty::Either(alternatives)
    }
}

fn schema() -> Schema {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md");
    let text = fs::read_to_string(path).expect("docs/json.md");
    let mut blocks = BTreeMap::new();
    let mut examples = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let fence = line.trim_end();
        let body: Vec<&str> = if fence.starts_with("```schema ") || fence.starts_with("```json ") {
            lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim_end() != "```")
                .collect()
        } else {
            continue;
        };
        if let Some(name) = fence.strip_prefix("```json ") {
            examples.push((name.trim().to_string(), n + 1, body.join("\n")));
            continue;
        }
        let name = fence["```schema ".len()..].trim().to_string();
        let block = if let [choice] = body.as_slice() {
            choice.trim().strip_prefix('=').map(|names| {
                Block::Choice(names.split('|').map(|n| n.trim().to_string()).collect())
            })
        } else {
            None
        };
        let block = block.unwrap_or_else(|| {
            Block::Object(
                body.iter()
                    .map(|l| {
                        let (key, ty) = l
                            .split_once(':')
                            .unwrap_or_else(|| panic!("docs/json.md {name}: not `key: type`: {l}"));
                        let (key, optional) = match key.trim().strip_suffix('?') {
                            Some(k) => (k, true),
                            None => (key.trim(), false),
                        };
                        (key.to_string(), optional, parse_type(ty))
                    })
                    .collect(),
            )
        });
        assert!(
            blocks.insert(name.clone(), block).is_none(),
            "docs/json.md: {name} twice"
        );
    }
    Schema { blocks, examples }
}

impl Schema {
    /// Check `value` (at `at`, for messages) against `ty`.
    fn check(&self, ty: &Ty, value: &Value, at: &str) -> Result<(), String> {
        let ok = match ty {
            Ty::Number => value.is_i64() || value.is_u64(),
            Ty::String => value.is_string(),
            Ty::Bool => value.is_boolean(),
            Ty::Null => value.is_null(),
            Ty::Literal(l) => value == l,
            Ty::List(item) => {
                let Some(items) = value.as_array() else {
                    return Err(format!("{at}: not a list: {value}"));
                };
                for (i, v) in items.iter().enumerate() {
                    self.check(item, v, &format!("{at}[{i}]"))?;
                }
                true
            }
            Ty::Named(name) => return self.check_block(name, value, at),
            Ty::Either(alternatives) => {
                let mut why = Vec::new();
                for a in alternatives {
                    match self.check(a, value, at) {
                        Ok(()) => return Ok(()),
                        Err(e) => why.push(e),
                    }
                }
                return Err(format!("{at}: none of {ty:?} fits: {}", why.join("; ")));
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{at}: {value} is not {ty:?}"))
        }
    }

    fn check_block(&self, name: &str, value: &Value, at: &str) -> Result<(), String> {
        let block = self
            .blocks
            .get(name)
            .unwrap_or_else(|| panic!("docs/json.md has no schema {name}"));
        match block {
            Block::Choice(names) => {
                let mut why = Vec::new();
                for n in names {
                    match self.check_block(n, value, at) {
                        Ok(()) => return Ok(()),
                        Err(e) => why.push(e),
                    }
                }
                Err(format!("{at}: no {name} fits: {}", why.join("; ")))
            }
            Block::Object(fields) => {
                let Some(object) = value.as_object() else {
                    return Err(format!("{at}: not an object ({name}): {value}"));
                };
                for key in object.keys() {
                    if !fields.iter().any(|(k, _, _)| k == key) {
                        return Err(format!("{at}.{key}: not in docs/json.md's {name}"));
                    }
                }
                for (key, optional, ty) in fields {
                    match object.get(key) {
                        Some(v) => self.check(ty, v, &format!("{at}.{key}"))?,
                        None if *optional => {}
                        None => return Err(format!("{at}.{key}: missing ({name})")),
                    }
                }
                Ok(())
            }
        }
    }

    /// Parse `out`'s stdout and check it as the document `name`.
    fn document(&self, name: &str, out: &Output) -> Value {
        assert_exit(out, 0);
        let text = String::from_utf8_lossy(&out.stdout);
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
        if let Err(e) = self.check_block(name, &value, name) {
            panic!("{name} does not match docs/json.md: {e}\n{text}");
        }
        value
    }

    /// Parse `out`'s stdout as the error document; the process exited with its `exit_status`.
    fn error(&self, out: &Output) -> Value {
        let text = String::from_utf8_lossy(&out.stdout);
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
        if let Err(e) = self.check_block("error", &value, "error") {
            panic!("error does not match docs/json.md: {e}\n{text}");
        }
        let status = value["error"]["exit_status"].as_i64().unwrap();
        assert_exit(out, status as i32);
        assert_eq!(value["version"], 1);
        value
    }
}

/// The file itself: every type named exists, and every example fits its schema.
#[test]
fn the_examples_in_docs_json_md_fit_its_schemas() {
    let schema = schema();
    fn names(ty: &Ty, out: &mut Vec<String>) {
        match ty {
            Ty::Named(n) => out.push(n.clone()),
            Ty::List(t) => names(t, out),
            Ty::Either(ts) => ts.iter().for_each(|t| names(t, out)),
            _ => {}
        }
    }
    for (name, block) in &schema.blocks {
        let mut used = Vec::new();
        match block {
            Block::Object(fields) => fields.iter().for_each(|(_, _, t)| names(t, &mut used)),
            Block::Choice(n) => used.extend(n.iter().cloned()),
        }
        for u in used {
            assert!(
                schema.blocks.contains_key(&u),
                "docs/json.md: {name} names {u}, which has no schema block"
            );
        }
    }
    for document in ["list", "run", "diff", "forget", "restore", "error"] {
        assert!(
            schema.examples.iter().any(|(n, _, _)| n == document),
            "docs/json.md has no example of {document}"
        );
    }
    for (name, line, text) in &schema.examples {
        let value: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("docs/json.md:{line}: example {name} is not JSON: {e}"));
        if let Err(e) = schema.check_block(name, &value, name) {
            panic!("docs/json.md:{line}: example {name} does not fit: {e}");
        }
    }
}

/// The real documents, on a disk with nested subvolumes, a kept old root and changes.
#[test]
fn privileged_every_json_document_fits_docs_json_md() {
    let disk = layout!("jsondoc");
    let schema = schema();
    // Keep this root (with its nested subvolumes) as an old root, then change the new one.
    assert_exit(&disk.run(&["--keep-old-roots", "3"]), 0);
    {
        let m = disk.mount();
        m.subvol("root/var/lib/machines");
        m.subvol("root/var/lib/machines/inner");
        fs::write(m.join("root/etc/new"), "new\n").unwrap();
        fs::write(m.join("root/etc/machine-id.blank"), "changed\n").unwrap();
    }
    let subs = disk.mount().subvolumes();

    let list = schema.document("list", &disk.output("list", ["--json"]));
    assert_eq!(list["version"], 1);
    assert_eq!(list["root"]["path"], "root");
    assert_eq!(list["blank"]["path"], "root-blank");
    let old = &list["old_roots"][0];
    let name = old["name"].as_str().unwrap().to_string();
    assert_eq!(old["path"], format!("old_roots/{name}"));
    let old_nested = old["nested"].as_array().unwrap();
    assert!(!old_nested.is_empty(), "{old}");
    for n in old_nested {
        assert!(
            n["path"]
                .as_str()
                .unwrap()
                .starts_with(&format!("old_roots/{name}/")),
            "nested paths are relative to the top level: {n}"
        );
    }

    // With one old root allowed, the kept one is pruned: prune_old names it like list does.
    let out = disk.run(&["--dry-run", "--json", "--keep-old-roots", "1"]);
    let run = schema.document("run", &out);
    assert_eq!(
        run["root"], list["root"],
        "root differs between run and list"
    );
    assert_eq!(run["blank"], list["blank"]);
    let steps = run["plan"]["steps"].as_array().unwrap();
    let prune = steps
        .iter()
        .find(|s| s["action"] == "prune_old")
        .unwrap_or_else(|| panic!("no prune_old in {run}"));
    assert_eq!(prune["name"], old["name"]);
    assert_eq!(prune["path"], old["path"]);
    assert_eq!(prune["nested"], old["nested"]);
    let keep = steps.iter().find(|s| s["action"] == "keep_old").unwrap();
    assert_eq!(
        keep["to"],
        format!("old_roots/{}", keep["name"].as_str().unwrap())
    );
    schema.document("run", &disk.run(&["--dry-run", "--json"]));

    let diff = schema.document("diff", &disk.output("diff", ["--json"]));
    assert_eq!(
        diff["root"], list["root"],
        "root differs between diff and list"
    );
    assert_eq!(diff["blank"], list["blank"]);
    assert_eq!(diff["old_root"], Value::Null);
    assert_eq!(diff["compared"]["path"], "root");
    let machines = diff["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/var/lib/machines")
        .unwrap_or_else(|| panic!("no /var/lib/machines in {diff}"));
    assert_eq!(machines["change"], "subvolume");
    assert_eq!(machines["nested"][0]["path"], "root/var/lib/machines/inner");

    let out = disk.output("diff", ["--json", &name]);
    let old_diff = schema.document("diff", &out);
    assert_eq!(old_diff["old_root"], name.as_str());
    assert_eq!(old_diff["compared"]["path"], old["path"]);
    assert_eq!(old_diff["compared"]["id"], old["id"]);
    assert!(
        old_diff["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/var/lib/machines"
                && e["nested"][0]["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("old_roots/{name}/"))),
        "{old_diff}"
    );

    let out = disk.output("diff", ["--json", "--exclude", "*"]);
    let all_out = schema.document("diff", &out);
    assert_eq!(all_out["entries"], Value::Array(vec![]));
    assert_eq!(all_out["excluded"][0]["pattern"], "*");
    assert_eq!(
        all_out["excluded"][0]["paths"].as_u64().unwrap() as usize,
        diff["entries"].as_array().unwrap().len()
    );

    assert_eq!(
        disk.mount().subvolumes(),
        subs,
        "list, a dry run or diff changed something"
    );
}

/// An old root as `list` shows it, but for its age, which moves with the clock.
fn without_age(old: &Value) -> Value {
    let mut old = old.clone();
    old.as_object_mut().unwrap().remove("age_seconds");
    old
}

/// `forget --dry-run`, `restore --dry-run` and errors, on a disk with a kept old root.
#[test]
fn privileged_forget_restore_and_error_documents_fit_docs_json_md() {
    let disk = layout!("jsonmore");
    let schema = schema();
    assert_exit(&disk.run(&["--keep-old-roots", "2"]), 0);
    let subs = disk.mount().subvolumes();
    let list = schema.document("list", &disk.output("list", ["--json"]));
    let old = &list["old_roots"][0];
    let name = old["name"].as_str().unwrap().to_string();
    assert!(!old["nested"].as_array().unwrap().is_empty(), "{old}");

    // `forget --dry-run` or `restore --dry-run` of `name`: its document, which describes root
    // and the blank as list does.
    let dry_run = |command: &str| {
        let out = disk.output(command, ["--dry-run", "--json", &name]);
        let document = schema.document(command, &out);
        assert_eq!(document["command"], command);
        assert_eq!(
            document["root"], list["root"],
            "root differs between {command} and list"
        );
        assert_eq!(document["blank"], list["blank"], "{command}");
        document
    };
    let forget = dry_run("forget");
    assert_eq!(
        without_age(&forget["old_root"]),
        without_age(old),
        "forget describes the old root otherwise than list"
    );
    // Also as old_roots/NAME: the same document.
    let out = disk.output(
        "forget",
        ["--dry-run", "--json", &format!("old_roots/{name}")],
    );
    let again = schema.document("forget", &out);
    assert_eq!(without_age(&again["old_root"]), without_age(old));

    let restore = dry_run("restore");
    assert_eq!(without_age(&restore["old_root"]), without_age(old));
    assert_eq!(restore["default_id"], list["default_id"]);
    assert_eq!(restore["default_follows"], false);
    let replaced = &restore["replaced"];
    assert_eq!(replaced["id"], list["root"]["id"]);
    assert_eq!(
        replaced["path"],
        format!("old_roots/{}", replaced["name"].as_str().unwrap())
    );

    // Errors: refused (exit 1), a bad NAME (usage, exit 2), a device that is not there.
    for args in [
        &["forget", "--dry-run", "--json", "no-such-old-root"][..],
        &["restore", "--dry-run", "--json", "no-such-old-root"],
        &["run", "--dry-run", "--json", "--blank", "no-such-blank"],
    ] {
        let out = disk.output(args[0], &args[1..]);
        let error = schema.error(&out);
        assert_eq!(error["error"]["exit_status"], 1, "{args:?}");
        assert_eq!(error["error"]["disk"], "untouched", "{args:?}");
    }
    let out = disk.output("forget", ["--dry-run", "--json", "a/b"]);
    assert_eq!(schema.error(&out)["error"]["exit_status"], 2);
    let out = bin_command()
        .args([
            "list",
            "--json",
            "--device",
            "/dev/no-such-disk",
            "--wait",
            "0",
        ])
        .output()
        .unwrap();
    let error = schema.error(&out);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/dev/no-such-disk"),
        "{error}"
    );

    assert_eq!(
        disk.mount().subvolumes(),
        subs,
        "a dry run or an error changed something"
    );
}
