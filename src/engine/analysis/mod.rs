//! Completion and inspection, through evcxr's rust-analyzer: Jupyter counts offsets in
//! characters, rust-analyzer in bytes. Completion offers names only (no argument snippets),
//! exact and prefix matches first; items private to other crates are left out by evcxr
//! (vendor/evcxr/RUSTLOOP-PATCH.md). Inspection shows docs the way rustdoc does (`docs.rs`).
//! While rust-analyzer is loading or the evaluator is busy, `fallback.rs` answers from what
//! the kernel knows; `rank.rs` orders both.

mod docs;
mod fallback;
mod rank;

pub use fallback::{INSTALL_PATHS, Known};

use super::{Completions, Inspection};
use evcxr::CommandContext;
use rank::rank;
use std::sync::Mutex;

/// The end (bytes) of the identifier under `cursor` (characters), or `None` at the start.
pub fn identifier_end(code: &str, cursor: usize) -> Option<usize> {
    let mut end = char_to_byte(code, cursor);
    while let Some(c) = code[end..].chars().next() {
        if c.is_alphanumeric() || c == '_' {
            end += c.len_utf8();
        } else {
            break;
        }
    }
    (end > 0).then_some(end)
}

/// Completions from rust-analyzer; what it offers after a path is remembered in `known` for
/// the times it is not ready.
pub fn complete(
    context: &mut CommandContext,
    known: &Mutex<Known>,
    code: &str,
    cursor: usize,
) -> Completions {
    let byte_cursor = char_to_byte(code, cursor);
    match context.completions(code, byte_cursor) {
        Ok(completions) => {
            let start = completions.start_offset.min(byte_cursor);
            let typed = code.get(start..byte_cursor).unwrap_or("");
            let matches = rank(typed, completions.completions.into_iter().map(|c| c.code));
            let (qualifier, _) = fallback::split_word(&code[..byte_cursor]);
            if typed.is_empty() || !qualifier.is_empty() {
                known.lock().unwrap().learn_path(qualifier, &matches);
            }
            Completions {
                matches,
                cursor_start: byte_to_char(code, completions.start_offset),
                cursor_end: byte_to_char(code, completions.end_offset),
                from_analysis: true,
            }
        }
        Err(e) => {
            tracing::debug!("completion failed: {e}");
            Completions {
                matches: Vec::new(),
                cursor_start: cursor,
                cursor_end: cursor,
                from_analysis: false,
            }
        }
    }
}

/// Documentation from rust-analyzer; what it shows is remembered in `known`.
pub fn inspect(
    context: &mut CommandContext,
    known: &Mutex<Known>,
    code: &str,
    cursor: usize,
) -> Inspection {
    // Inspect the whole identifier under the cursor, not just what precedes it.
    let end = identifier_end(code, cursor)?;
    match context.hover_at(code, end) {
        Ok((plain, html)) if plain != "No documentation found" => {
            let shown = (docs::hide_plain(&plain, &html), docs::hide_html(&html));
            known.lock().unwrap().learn_docs(code, end, &shown);
            Some(shown)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("inspect failed: {e}");
            None
        }
    }
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
}
