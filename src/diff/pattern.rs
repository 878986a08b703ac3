//! `--exclude` patterns of `btrfs-rollback diff`.

use anyhow::{bail, Result};

use crate::names::quoted;

/// An `--exclude` pattern, matched against absolute paths (`/etc/foo`) and against each
/// directory above them, so a pattern naming a directory covers what is in it.
///
/// `*` matches any run of characters within one name (not `/`); `**` matches anything,
/// `/` included, and `/**/` also matches a single `/`. Every other byte matches itself. A
/// pattern not starting with `/` matches at any depth (as if it began with `/**/`); a trailing
/// `/` is ignored.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// As given, for saying what it excluded.
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    /// `*`: anything but `/`.
    Star,
    /// `**`: anything.
    Any,
    /// `**/`: nothing, or anything ending with `/`.
    AnyDirs,
}

impl Pattern {
    pub fn new(pattern: &str) -> Result<Pattern> {
        let trimmed = pattern.trim_end_matches('/');
        if trimmed.is_empty() {
            bail!(
                "--exclude {}: give a path such as /var/cache or *.log",
                quoted(pattern)
            );
        }
        let text = if trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/**/{trimmed}")
        };
        let b = text.as_bytes();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'*' && b.get(i + 1) == Some(&b'*') {
                let mut j = i + 2;
                while b.get(j) == Some(&b'*') {
                    j += 1;
                }
                if b.get(j) == Some(&b'/') {
                    tokens.push(Token::AnyDirs);
                    i = j + 1;
                } else {
                    tokens.push(Token::Any);
                    i = j;
                }
            } else if b[i] == b'*' {
                tokens.push(Token::Star);
                i += 1;
            } else {
                tokens.push(Token::Byte(b[i]));
                i += 1;
            }
        }
        Ok(Pattern {
            text: pattern.to_string(),
            tokens,
        })
    }

    /// The pattern as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// For the command line parser: the pattern as given if it is one, else why not (the
    /// parser names the option, and exits with the usage status).
    pub fn check(pattern: &str) -> std::result::Result<String, String> {
        if pattern.trim_end_matches('/').is_empty() {
            return Err(
                "an empty pattern (or only '/'): give a path such as /var/cache or *.log"
                    .to_string(),
            );
        }
        Pattern::new(pattern)
            .map(|_| pattern.to_string())
            .map_err(|e| format!("{e:#}"))
    }

    /// Whether the whole of `path` matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        let (m, n) = (self.tokens.len(), path.len());
        // ok[i][j]: tokens[i..] match path[j..]. Filled from the end.
        let mut next = vec![false; n + 1];
        next[n] = true;
        for i in (0..m).rev() {
            let mut cur = vec![false; n + 1];
            // For AnyDirs: whether some k >= j has path[k] == '/' and next[k + 1].
            let mut slash_then_rest = false;
            for j in (0..=n).rev() {
                if j < n && path[j] == b'/' && next[j + 1] {
                    slash_then_rest = true;
                }
                cur[j] = match self.tokens[i] {
                    Token::Byte(c) => j < n && path[j] == c && next[j + 1],
                    Token::Star => next[j] || (j < n && path[j] != b'/' && cur[j + 1]),
                    Token::Any => next[j] || (j < n && cur[j + 1]),
                    Token::AnyDirs => next[j] || slash_then_rest,
                };
            }
            next = cur;
        }
        next[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        Pattern::new(pattern).unwrap().matches(path.as_bytes())
    }

    #[test]
    fn patterns() {
        assert!(m("/etc/foo", "/etc/foo"));
        assert!(!m("/etc/foo", "/etc/foobar"));
        assert!(!m("/etc/foo", "/etc"));
        assert!(m("/etc/*.conf", "/etc/a.conf"));
        assert!(m("/etc/*.conf", "/etc/.conf"));
        assert!(!m("/etc/*.conf", "/etc/x/a.conf"));
        assert!(m("/var/**/*.log", "/var/log/a.log"));
        assert!(m("/var/**/*.log", "/var/a.log"));
        assert!(m("/var/**/*.log", "/var/log/x/y/a.log"));
        assert!(!m("/var/**/*.log", "/var/log/a.log.1"));
        assert!(m("/var/**", "/var/a/b"));
        assert!(!m("/var/**", "/var"));
        assert!(m("/**", "/anything/at/all"));
        assert!(m("*.log", "/a.log"));
        assert!(m("*.log", "/x/y/a.log"));
        assert!(m("cache", "/var/cache"));
        assert!(!m("cache", "/var/mycache"));
        assert!(m("/var/cache/", "/var/cache"));
        assert!(m("/a b/*", "/a b/c d"));
        assert!(m("/v*r/l*g", "/var/log"));
        assert!(!m("/v*r/l*g", "/var/lib"));
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("/").is_err());
        assert!(Pattern::check("").is_err());
        assert!(Pattern::check("//").is_err());
        assert_eq!(Pattern::check("*").as_deref(), Ok("*"));
    }
}
