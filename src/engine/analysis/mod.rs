//! Completion and inspection, through evcxr's rust-analyzer: Jupyter counts offsets in
//! characters, rust-analyzer in bytes. Completion offers names only (no argument snippets),
//! exact and prefix matches first; items private to other crates are left out by evcxr
//! (vendor/evcxr/RUSTLOOP-PATCH.md). Inspection shows docs the way rustdoc does (`docs.rs`).

mod docs;

use super::{Completions, Inspection};
use evcxr::CommandContext;

pub fn complete(context: &mut CommandContext, code: &str, cursor: usize) -> Completions {
    let byte_cursor = char_to_byte(code, cursor);
    match context.completions(code, byte_cursor) {
        Ok(completions) => {
            let start = completions.start_offset.min(byte_cursor);
            let typed = code.get(start..byte_cursor).unwrap_or("");
            Completions {
                matches: rank(typed, completions.completions.into_iter().map(|c| c.code)),
                cursor_start: byte_to_char(code, completions.start_offset),
                cursor_end: byte_to_char(code, completions.end_offset),
            }
        }
        Err(e) => {
            tracing::debug!("completion failed: {e}");
            Completions {
                matches: Vec::new(),
                cursor_start: cursor,
                cursor_end: cursor,
            }
        }
    }
}

pub fn inspect(context: &mut CommandContext, code: &str, cursor: usize) -> Inspection {
    // Inspect the whole identifier under the cursor, not just what precedes it.
    let mut end = char_to_byte(code, cursor);
    while let Some(c) = code[end..].chars().next() {
        if c.is_alphanumeric() || c == '_' {
            end += c.len_utf8();
        } else {
            break;
        }
    }
    if end == 0 {
        return None;
    }
    match context.hover_at(code, end) {
        Ok((plain, html)) if plain != "No documentation found" => {
            Some((docs::hide_plain(&plain, &html), docs::hide_html(&html)))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("inspect failed: {e}");
            None
        }
    }
}

/// What to insert for each completion, best first: the name alone (rust-analyzer's snippet
/// `sleep(duration)` inserts `sleep`, `sleep::` and `println!()` insert `sleep` and
/// `println!`), without duplicates; exact matches of what was typed, then prefix matches
/// (case-sensitive, then not), then the rest (rust-analyzer's fuzzy matches), each group in
/// alphabetical order with shorter names first.
fn rank(typed: &str, codes: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for code in codes {
        let name = name_of(&code);
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    let lower = typed.to_lowercase();
    let group = |name: &str| {
        if name == typed {
            0
        } else if name.starts_with(typed) {
            1
        } else if name.to_lowercase().starts_with(&lower) {
            2
        } else {
            3
        }
    };
    names.sort_by_cached_key(|n| (group(n), n.len(), n.clone()));
    names
}

/// The name a completion's code starts with (an identifier, `r#` identifiers and a macro's `!`
/// included); code that does not start with one (postfix snippets, `&mut ...`) is kept whole.
fn name_of(code: &str) -> String {
    let ident_len = code
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_alphanumeric() || c == '_' || (i == 1 && c == '#' && code.starts_with('r')))
        })
        .map_or(code.len(), |(i, _)| i);
    if ident_len == 0 {
        return code.trim().to_owned();
    }
    let mut name = code[..ident_len].to_owned();
    if code[ident_len..].starts_with('!') {
        name.push('!');
    }
    name
}

fn char_to_byte(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(byte, _)| byte)
}

fn byte_to_char(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_and_byte_offsets() {
        let text = "let é = 1;";
        assert_eq!(char_to_byte(text, 5), 6);
        assert_eq!(byte_to_char(text, 6), 5);
        assert_eq!(char_to_byte(text, 100), text.len());
    }

    #[test]
    fn names_only_exact_and_prefix_matches_first() {
        // What rust-analyzer offered (in its order) for `tokio::time::sl`.
        let codes = [
            "sleep_until(deadline)",
            "Sleep",
            "Instant",
            "sleep::",
            "sleep(duration)",
        ];
        let ranked = rank("sl", codes.iter().map(|c| c.to_string()));
        assert_eq!(ranked, ["sleep", "sleep_until", "Sleep", "Instant"]);
        let ranked = rank("sleep", codes.iter().map(|c| c.to_string()));
        assert_eq!(ranked[..2], ["sleep", "sleep_until"]);
        assert_eq!(name_of("println!($0)"), "println!");
        assert_eq!(name_of("r#type"), "r#type");
    }
}
