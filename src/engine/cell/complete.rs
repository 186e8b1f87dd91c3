//! `is_complete_request`: whether a cell is complete, from brackets and the parser alone (so
//! `jupyter console` knows when to continue a line).

use super::WRAP_PREFIX;
use super::commands::split_commands;
use ra_ap_syntax::{Edition, SourceFile};

/// Whether a cell is complete, for `is_complete_request` (`jupyter console` continues lines
/// while a cell is incomplete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// More input expected; the indent to continue with.
    Incomplete(String),
    Invalid,
}

pub fn is_complete(cell: &str) -> Completeness {
    let (commands_end, _, _) = split_commands(cell);
    let rust = &cell[commands_end..];
    if rust.trim().is_empty() {
        return Completeness::Complete;
    }
    match scan_brackets(rust) {
        Brackets::Unbalanced => return Completeness::Invalid,
        Brackets::Open(depth) => return Completeness::Incomplete("    ".repeat(depth.max(1))),
        Brackets::Balanced => {}
    }
    let trimmed = rust.trim_end();
    const CONTINUATIONS: &[&str] = &[
        "=", "+", "-", "*", "/", "%", "&&", "||", "|", "&", "^", ",", ".", "->", "=>", "::", "<",
        "as", "in",
    ];
    if CONTINUATIONS.iter().any(|c| trimmed.ends_with(c)) && !trimmed.ends_with("..") {
        return Completeness::Incomplete(String::new());
    }
    let parse_errors = SourceFile::parse(&format!("{WRAP_PREFIX}{rust}\n}}"), Edition::Edition2024)
        .errors()
        .into_iter()
        // A final `let x = 1` without `;` is accepted by evcxr.
        .filter(|e| !e.to_string().contains("expected SEMICOLON"))
        .count();
    if parse_errors > 0 {
        Completeness::Invalid
    } else {
        Completeness::Complete
    }
}

enum Brackets {
    Balanced,
    Open(usize),
    Unbalanced,
}

/// Tracks (), [], {} outside strings, chars and comments. Unterminated strings or block
/// comments count as open.
fn scan_brackets(src: &str) -> Brackets {
    let bytes = src.as_bytes();
    let mut stack = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < bytes.len() && depth > 0 {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                    }
                    i += 1;
                }
                if depth > 0 {
                    return Brackets::Open(stack.len() + 1);
                }
                continue;
            }
            b'r' | b'b'
                if {
                    // raw strings: r"..", r#".."#, br#".."#
                    let mut j = i + if c == b'b' { 1 } else { 0 };
                    bytes.get(j) == Some(&b'r')
                        && {
                            j += 1;
                            while bytes.get(j) == Some(&b'#') {
                                j += 1;
                            }
                            bytes.get(j) == Some(&b'"')
                        }
                        && (i == 0 || !is_ident_byte(bytes[i - 1]))
                } =>
            {
                let mut j = i + if c == b'b' { 2 } else { 1 };
                let mut hashes = 0;
                while bytes[j] == b'#' {
                    hashes += 1;
                    j += 1;
                }
                j += 1; // opening quote
                let closing: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                match bytes[j..]
                    .windows(closing.len())
                    .position(|w| w == closing.as_slice())
                {
                    Some(p) => i = j + p + closing.len(),
                    None => return Brackets::Open(stack.len() + 1),
                }
                continue;
            }
            b'"' => {
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Brackets::Open(stack.len() + 1),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'\'' => {
                // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
                if bytes.get(i + 1) == Some(&b'\\') {
                    let mut j = i + 2;
                    while j < bytes.len() && bytes[j] != b'\'' {
                        j += 1;
                    }
                    i = j;
                } else if let Some(len) = src[i + 1..].chars().next().map(char::len_utf8)
                    && bytes.get(i + 1 + len) == Some(&b'\'')
                {
                    i += 1 + len;
                }
            }
            b'(' | b'[' | b'{' => stack.push(c),
            b')' | b']' | b'}' => {
                let open = match c {
                    b')' => b'(',
                    b']' => b'[',
                    _ => b'{',
                };
                if stack.pop() != Some(open) {
                    return Brackets::Unbalanced;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if stack.is_empty() {
        Brackets::Balanced
    } else {
        Brackets::Open(stack.len())
    }
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}
