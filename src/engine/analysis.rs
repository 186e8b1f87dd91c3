//! Completion and inspection, through evcxr's rust-analyzer: Jupyter counts offsets in
//! characters, rust-analyzer in bytes.

use super::{Completions, Inspection};
use evcxr::CommandContext;

pub fn complete(context: &mut CommandContext, code: &str, cursor: usize) -> Completions {
    let byte_cursor = char_to_byte(code, cursor);
    match context.completions(code, byte_cursor) {
        Ok(completions) => Completions {
            matches: completions
                .completions
                .into_iter()
                .map(|c| c.code)
                .collect(),
            cursor_start: byte_to_char(code, completions.start_offset),
            cursor_end: byte_to_char(code, completions.end_offset),
        },
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
        Ok((plain, html)) if plain != "No documentation found" => Some((plain, html)),
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
