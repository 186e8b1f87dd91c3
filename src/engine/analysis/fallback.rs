//! Completions answered without rust-analyzer, while it is loading or busy (the evaluator
//! thread runs one request at a time, and rust-analyzer's first picture of std and tokio takes
//! seconds): what the kernel knows already.
//!
//! - identifiers of cells that ran (variables, functions, types the user defined);
//! - Rust keywords and common macros;
//! - rustloop's `:` commands;
//! - after `path::`, the names rust-analyzer offered for that path before, in this session or
//!   an earlier one on this cache slot (kept in the slot, so a new session knows
//!   `tokio::time::` before rust-analyzer has loaded), or when `rustloop install` asked it
//!   about the paths notebooks use most ([`INSTALL_PATHS`]);
//! - for inspection, the documentation rust-analyzer gave for the same path before.

use super::super::Completions;
use super::rank::rank;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

const KEYWORDS: &[&str] = &[
    "as",
    "async",
    "await",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "Self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "println!",
    "print!",
    "eprintln!",
    "format!",
    "vec!",
    "assert!",
    "assert_eq!",
    "panic!",
    "dbg!",
    "write!",
    "writeln!",
    "tokio",
    "std",
    "rustloop",
];

/// The `:` commands rustloop and evcxr understand.
const COMMANDS: &[&str] = &[
    ":dep",
    ":vars",
    ":tasks",
    ":opt",
    ":help",
    ":clear",
    ":explain",
    ":efmt",
    ":fmt",
    ":timing",
    ":time_passes",
    ":sccache",
    ":linker",
    ":offline",
    ":last_compile_dir",
    ":last_error_json",
    ":types",
    ":allow_static_linking",
    ":cache",
];

/// Paths whose members `rustloop install` asks rust-analyzer for, so that completion after
/// them works before rust-analyzer has loaded even in the first session.
pub const INSTALL_PATHS: &[&str] = &[
    "tokio",
    "tokio::time",
    "tokio::sync",
    "tokio::sync::mpsc",
    "tokio::sync::oneshot",
    "tokio::sync::broadcast",
    "tokio::sync::watch",
    "tokio::task",
    "tokio::net",
    "tokio::io",
    "tokio::fs",
    "tokio::process",
    "tokio::signal",
    "tokio::runtime",
    "std",
    "std::collections",
    "std::time",
    "std::sync",
    "std::io",
    "std::fs",
    "std::fmt",
    "std::iter",
    "std::thread",
    "std::path",
    "std::env",
    "std::str",
    "rustloop",
    "rustloop::widgets",
];

/// At most this many identifiers from past cells, and this many remembered paths.
const MAX_IDENTS: usize = 20_000;
const MAX_PATHS: usize = 512;
const MAX_NAMES_PER_PATH: usize = 4096;

/// What the kernel has learned that completion can use without rust-analyzer.
#[derive(Default)]
pub struct Known {
    idents: BTreeSet<String>,
    paths: HashMap<String, Vec<String>>,
    docs: HashMap<String, (String, String)>,
    /// Where the paths are kept between sessions.
    file: Option<PathBuf>,
}

impl Known {
    /// What earlier sessions learned, kept in `file` (which also receives what this one
    /// learns).
    pub fn load(file: PathBuf) -> Known {
        let paths = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        Known {
            paths,
            file: Some(file),
            ..Known::default()
        }
    }

    /// Learns the identifiers of a cell that ran.
    pub fn learn_cell(&mut self, code: &str) {
        for ident in identifiers(code) {
            if self.idents.len() >= MAX_IDENTS {
                break;
            }
            self.idents.insert(ident.to_owned());
        }
    }

    /// Remembers what rust-analyzer offered after `qualifier::`.
    pub fn learn_path(&mut self, qualifier: &str, names: &[String]) {
        if qualifier.is_empty() || names.is_empty() {
            return;
        }
        if self.paths.len() >= MAX_PATHS && !self.paths.contains_key(qualifier) {
            return;
        }
        let known = self.paths.entry(qualifier.to_owned()).or_default();
        let before = known.len();
        for name in names {
            if known.len() < MAX_NAMES_PER_PATH && !known.contains(name) {
                known.push(name.clone());
            }
        }
        if known.len() != before
            && let Some(file) = &self.file
            && let Ok(text) = serde_json::to_string(&self.paths)
        {
            // Written whole and renamed, so a reader never sees half a file.
            let partial = file.with_extension("partial");
            if std::fs::write(&partial, text).is_ok() {
                let _ = std::fs::rename(&partial, file);
            }
        }
    }

    /// Remembers the documentation shown for the path that ends at `end` (bytes) in `code`.
    pub fn learn_docs(&mut self, code: &str, end: usize, docs: &(String, String)) {
        if self.docs.len() < MAX_PATHS {
            self.docs.insert(path_at(code, end), docs.clone());
        }
    }

    /// Documentation shown before for the path that ends at `end` (bytes) in `code`.
    pub fn docs(&self, code: &str, end: usize) -> Option<(String, String)> {
        self.docs.get(&path_at(code, end)).cloned()
    }

    /// Completions for `code` at `cursor` (characters) from what is known.
    pub fn complete(&self, code: &str, cursor: usize) -> Completions {
        let before: String = code.chars().take(cursor).collect();
        let (qualifier, typed) = split_word(&before);
        let start = cursor - typed.chars().count();
        let candidates: Vec<String> = if typed.starts_with(':') && qualifier.is_empty() {
            COMMANDS.iter().map(|c| c.to_string()).collect()
        } else if !qualifier.is_empty() {
            self.paths.get(qualifier).cloned().unwrap_or_default()
        } else {
            let own = identifiers(code)
                .filter(|ident| *ident != typed)
                .map(str::to_owned);
            KEYWORDS
                .iter()
                .map(|k| k.to_string())
                .chain(self.idents.iter().cloned())
                .chain(own)
                .collect()
        };
        let lower = typed.to_lowercase();
        let matching = candidates
            .into_iter()
            .filter(|c| c.to_lowercase().starts_with(&lower));
        Completions {
            matches: rank(typed, matching),
            cursor_start: start,
            cursor_end: cursor,
            from_analysis: false,
        }
    }
}

/// The word being typed at the end of `before`, and the path before it (`tokio::time` for
/// `tokio::time::sl`; empty when there is none). A `:` command counts as a word.
pub fn split_word(before: &str) -> (&str, &str) {
    let word_start = before
        .char_indices()
        .rev()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '!'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let typed = &before[word_start..];
    let head = &before[..word_start];
    if let Some(path) = head.strip_suffix("::") {
        let path_start = path
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        return (&path[path_start..], typed);
    }
    if head.ends_with(':') && !head.ends_with("::") {
        let colon = head.len() - 1;
        let at_line_start = head[..colon].trim_end_matches([' ', '\t']).ends_with('\n')
            || head[..colon].trim().is_empty();
        if at_line_start {
            return ("", &before[colon..]);
        }
    }
    ("", typed)
}

/// The path expression that ends at byte `end` (`tokio::spawn` in `x = tokio::spawn`).
fn path_at(code: &str, end: usize) -> String {
    let (qualifier, word) = split_word(&code[..end.min(code.len())]);
    if qualifier.is_empty() {
        word.to_owned()
    } else {
        format!("{qualifier}::{word}")
    }
}

fn identifiers(code: &str) -> impl Iterator<Item = &str> {
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.len() >= 2 && !w.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_paths() {
        assert_eq!(split_word("let x = tokio::time::sl"), ("tokio::time", "sl"));
        assert_eq!(split_word("foo(bar"), ("", "bar"));
        assert_eq!(split_word(":de"), ("", ":de"));
        assert_eq!(split_word("x\n:va"), ("", ":va"));
        assert_eq!(split_word("a::"), ("a", ""));
    }

    #[test]
    fn knows_past_cells_commands_and_remembered_paths() {
        let mut known = Known::default();
        known.learn_cell("let counter_total = 5;\nfn compute_total() {}");
        let c = known.complete("comp", 4);
        assert_eq!(c.matches, ["compute_total"]);
        assert_eq!((c.cursor_start, c.cursor_end), (0, 4));
        assert!(
            known
                .complete("counter_", 8)
                .matches
                .contains(&"counter_total".to_owned())
        );
        assert_eq!(known.complete(":va", 3).matches, [":vars"]);
        assert!(known.complete("tokio::time::sl", 15).matches.is_empty());
        known.learn_path(
            "tokio::time",
            &["sleep".into(), "sleep_until".into(), "Instant".into()],
        );
        let c = known.complete("tokio::time::sl", 15);
        assert_eq!(c.matches, ["sleep", "sleep_until"]);
        assert_eq!(c.cursor_start, 13);
        assert!(
            known
                .complete("wh", 2)
                .matches
                .contains(&"while".to_owned())
        );
        let docs = ("spawn docs".to_owned(), "<p>spawn docs</p>".to_owned());
        known.learn_docs("tokio::spawn(async {})", 12, &docs);
        assert_eq!(known.docs("let h = tokio::spawn", 20), Some(docs));
        assert_eq!(known.docs("spawn", 5), None);
    }

    #[test]
    fn paths_are_kept_for_the_next_session() {
        let file = std::env::temp_dir().join(format!("rustloop-known-{}.json", std::process::id()));
        let mut known = Known::load(file.clone());
        known.learn_path("tokio::time", &["sleep".into(), "interval".into()]);
        let next = Known::load(file.clone());
        assert_eq!(next.complete("tokio::time::sl", 15).matches, ["sleep"]);
        std::fs::remove_file(file).unwrap();
    }
}
