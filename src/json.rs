//! A minimal JSON writer for `--json` output. The shapes are written by `render.rs` (and
//! `diff`) and documented in `docs/json.md`; this module only knows how to spell values. (No serde: a few dozen lines do not justify a
//! dependency in an initramfs binary.)

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;

/// A JSON value. Objects keep their keys in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// A name or path; bytes that are not UTF-8 become U+FFFD.
    pub fn os(s: impl AsRef<OsStr>) -> Json {
        Json::Str(s.as_ref().to_string_lossy().into_owned())
    }

    pub fn path(p: &Path) -> Json {
        Json::os(p.as_os_str())
    }

    pub fn id(id: u64) -> Json {
        Json::Int(id as i64)
    }

    pub fn to_string_pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Json::Str(s) => write_str(out, s),
            Json::Array(items) if items.is_empty() => out.push_str("[]"),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 1);
                    item.write(out, indent + 1);
                }
                out.push('\n');
                pad(out, indent);
                out.push(']');
            }
            Json::Object(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    pad(out, indent + 1);
                    write_str(out, key);
                    out.push_str(": ");
                    value.write(out, indent + 1);
                }
                out.push('\n');
                pad(out, indent);
                out.push('}');
            }
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spells_values() {
        let v = Json::Object(vec![
            ("name", Json::str("a \"b\"\n\u{1}")),
            ("id", Json::id(256)),
            ("ro", Json::Bool(true)),
            ("none", Json::Null),
            ("list", Json::Array(vec![Json::Int(1), Json::Array(vec![])])),
            ("empty", Json::Object(vec![])),
        ]);
        assert_eq!(
            v.to_string_pretty(),
            "{\n  \"name\": \"a \\\"b\\\"\\n\\u0001\",\n  \"id\": 256,\n  \"ro\": true,\n  \
             \"none\": null,\n  \"list\": [\n    1,\n    []\n  ],\n  \"empty\": {}\n}\n"
        );
    }
}
