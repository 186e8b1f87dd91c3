//! This session's input history, for `history_request` (tail, range and search).

use serde_json::{Value, json};

/// The number this kernel reports as its session in history entries.
pub const SESSION: u64 = 1;

#[derive(Default)]
pub struct History {
    /// (execution_count, code)
    entries: Vec<(u64, String)>,
}

impl History {
    pub fn record(&mut self, execution_count: u64, code: &str) {
        self.entries.push((execution_count, code.to_owned()));
    }

    /// Builds the `history_reply` content for a request.
    pub fn reply(&self, request: &Value) -> Value {
        let output = request["output"].as_bool().unwrap_or(false);
        let n = request["n"].as_u64().map(|n| n as usize);
        let selected: Vec<&(u64, String)> = match request["hist_access_type"].as_str() {
            Some("tail") => {
                let n = n.unwrap_or(10);
                let skip = self.entries.len().saturating_sub(n);
                self.entries.iter().skip(skip).collect()
            }
            Some("range") => {
                let session = request["session"].as_i64().unwrap_or(0);
                // 0 and negative offsets mean "this session"; other sessions have no history.
                if session > 0 && session as u64 != SESSION {
                    Vec::new()
                } else {
                    let start = request["start"].as_u64().unwrap_or(0);
                    let stop = request["stop"].as_u64();
                    self.entries
                        .iter()
                        .filter(|(count, _)| *count >= start && stop.is_none_or(|s| *count < s))
                        .collect()
                }
            }
            Some("search") => {
                let pattern = request["pattern"].as_str().unwrap_or("*");
                let unique = request["unique"].as_bool().unwrap_or(false);
                let mut seen = std::collections::HashSet::new();
                let mut found: Vec<&(u64, String)> = self
                    .entries
                    .iter()
                    .rev()
                    .filter(|(_, code)| glob_match(pattern, code))
                    .filter(|(_, code)| !unique || seen.insert(code.as_str()))
                    .collect();
                if let Some(n) = n {
                    found.truncate(n);
                }
                found.reverse();
                found
            }
            _ => Vec::new(),
        };
        let history: Vec<Value> = selected
            .into_iter()
            .map(|(count, code)| {
                if output {
                    json!([SESSION, count, [code, Value::Null]])
                } else {
                    json!([SESSION, count, code])
                }
            })
            .collect();
        json!({ "status": "ok", "history": history })
    }
}

/// SQLite `GLOB`, which IPython's history search uses: `*` any run, `?` one character,
/// `[abc]`/`[a-z]`/`[^abc]` a class, everything else literal and case-sensitive, matched
/// against the whole input. `*` and `?` in the pattern are always wildcards, so `6 *` finds
/// `6 * 7`.
fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and the text position it has consumed up to.
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = ti;
                pi += 1;
                continue;
            }
            Some('?') => Some(1),
            Some('[') => class_match(&p[pi..], t[ti]),
            Some(&c) => (c == t[ti]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ti += 1;
            }
            (None, Some(s)) => {
                pi = s + 1;
                mark += 1;
                ti = mark;
            }
            (None, None) => return false,
        }
    }
    while p.get(pi) == Some(&'*') {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against the class starting at `class[0] == '['`; returns the class's length in
/// the pattern when it matches. An unclosed `[` is a literal, as in SQLite.
fn class_match(class: &[char], c: char) -> Option<usize> {
    let mut i = 1;
    let negate = class.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut found = false;
    let mut first = true;
    while i < class.len() && (first || class[i] != ']') {
        first = false;
        if class.get(i + 1) == Some(&'-') && class.get(i + 2).is_some_and(|&e| e != ']') {
            found |= class[i] <= c && c <= class[i + 2];
            i += 3;
        } else {
            found |= class[i] == c;
            i += 1;
        }
    }
    if i >= class.len() {
        return (c == '[').then_some(1);
    }
    (found != negate).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        let mut h = History::default();
        for (i, code) in ["let a = 1;", "a + 1", "let b = 2;", "a + 1"]
            .iter()
            .enumerate()
        {
            h.record(i as u64 + 1, code);
        }
        h
    }

    #[test]
    fn tail() {
        let reply = history().reply(&json!({"hist_access_type": "tail", "n": 2}));
        assert_eq!(
            reply["history"],
            json!([[1, 3, "let b = 2;"], [1, 4, "a + 1"]])
        );
    }

    #[test]
    fn range_with_output() {
        let reply = history().reply(&json!({
            "hist_access_type": "range", "session": 0, "start": 2, "stop": 3, "output": true
        }));
        assert_eq!(reply["history"], json!([[1, 2, ["a + 1", null]]]));
    }

    #[test]
    fn search_unique() {
        let reply = history()
            .reply(&json!({"hist_access_type": "search", "pattern": "a*", "unique": true}));
        assert_eq!(reply["history"], json!([[1, 4, "a + 1"]]));
        let reply = history().reply(&json!({"hist_access_type": "search", "pattern": "let ?*"}));
        assert_eq!(reply["history"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn glob() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "abbc"));
        assert!(glob_match("*b*", "abc"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[^a-c]x", "bx"));
        assert!(glob_match("[]]", "]"));
        assert!(!glob_match("A*", "abc"));
    }

    #[test]
    fn star_in_the_pattern_is_a_wildcard_even_where_the_text_has_one() {
        // ipykernel (SQLite GLOB) finds `6 * 7` for `6 *`; a literal-first matcher did not.
        assert!(glob_match("6 *", "6 * 7"));
        assert!(glob_match("*[*] 7", "6 * 7"));
        assert!(glob_match("6 ? 7", "6 * 7"));
        let mut h = History::default();
        h.record(1, "6 * 7");
        let reply = h.reply(&json!({"hist_access_type": "search", "pattern": "6 *"}));
        assert_eq!(reply["history"], json!([[1, 1, "6 * 7"]]));
    }
}
