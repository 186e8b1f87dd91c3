//! Turning what went wrong into Jupyter `error` content: compile errors rendered against the
//! user's own source lines, panics, interrupts and evaluator crashes.

use super::cell::Prepared;
use std::fmt::Write as _;

const RED: &str = "\x1b[0;31m";
const BOLD_RED: &str = "\x1b[1;31m";
const BLUE: &str = "\x1b[1;34m";
const CYAN: &str = "\x1b[0;36m";
const RESET: &str = "\x1b[0m";

/// Jupyter's error triple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

impl ErrorInfo {
    pub fn new(ename: &str, evalue: impl Into<String>) -> Self {
        let evalue = evalue.into();
        ErrorInfo {
            ename: ename.to_owned(),
            traceback: vec![format!("{BOLD_RED}{ename}{RESET}: {evalue}")],
            evalue,
        }
    }
}

/// Renders evcxr's compile errors against the original cell source.
pub fn compile_errors(
    errors: &[evcxr::CompilationError],
    prepared: &Prepared,
    original: &str,
) -> ErrorInfo {
    let mut traceback = Vec::new();
    let mut first_message = None;
    for error in errors {
        let message = friendly_message(error);
        let code = error.code().map(|c| format!("[{c}]")).unwrap_or_default();
        let level = error.level();
        first_message.get_or_insert_with(|| message.clone());
        let mut text = format!("{BOLD_RED}{level}{code}{RESET}: {message}\n");
        for spanned in error.spanned_messages() {
            let Some(span) = &spanned.span else {
                if !spanned.label.is_empty() && spanned.label != format!("{level}: {message}") {
                    let _ = writeln!(text, "  {CYAN}note{RESET}: {}", spanned.label);
                }
                continue;
            };
            let start = to_original(prepared, original, span.start_line, span.start_column);
            let end = to_original(prepared, original, span.end_line, span.end_column);
            render_span(&mut text, original, start, end, &spanned.label);
        }
        for help in error.help() {
            let _ = writeln!(text, "  {CYAN}help{RESET}: {help}");
        }
        traceback.push(text.trim_end().to_owned());
    }
    ErrorInfo {
        ename: "CompilationError".to_owned(),
        evalue: first_message.unwrap_or_else(|| "compilation failed".to_owned()),
        traceback,
    }
}

/// Rewrites messages that mention rustloop's generated display code into what the user did.
fn friendly_message(error: &evcxr::CompilationError) -> String {
    let message = error.message();
    if error.code() == Some("E0599") && message.contains("evcxr_display") {
        return "the cell's final expression cannot be shown: its type implements neither \
                `Debug` nor `rustloop::Rich` (end the line with `;` to discard the value, or \
                derive `Debug`)"
            .to_owned();
    }
    if message.contains("the `!` type is experimental") {
        return "rustloop could not name the type of a variable this cell defines (it was \
                inferred as `!`, e.g. a task that only panics, or a value from a macro such as \
                `select!`); give the variable an explicit type, e.g. \
                `let h: tokio::task::JoinHandle<()> = ...;`"
            .to_owned();
    }
    message
}

/// (line, column) of the evcxr code, 1-based with columns in characters, to the 0-based
/// (line, character column) of the original cell.
fn to_original(prepared: &Prepared, original: &str, line: usize, column: usize) -> (usize, usize) {
    let offset = line_col_to_offset(&prepared.code, line, column);
    let offset = prepared.original_offset(offset).min(original.len());
    let before = &original[..floor_char_boundary(original, offset)];
    let line = before.matches('\n').count();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count())
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn line_col_to_offset(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col_bytes: usize = l
                .chars()
                .take(column.saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return offset + col_bytes;
        }
        offset += l.len();
    }
    offset
}

fn render_span(
    out: &mut String,
    original: &str,
    start: (usize, usize),
    end: (usize, usize),
    label: &str,
) {
    let lines: Vec<&str> = original.lines().collect();
    let (line, col) = start;
    let Some(source) = lines.get(line) else {
        return;
    };
    let width = (line + 1).to_string().len();
    let _ = writeln!(
        out,
        "{BLUE}{:>width$}-->{RESET} cell line {}:{}",
        "",
        line + 1,
        col + 1
    );
    let _ = writeln!(out, "{BLUE}{:>width$} |{RESET}", "");
    let _ = writeln!(out, "{BLUE}{} |{RESET} {source}", line + 1);
    let underline_end = if end.0 == line {
        end.1.max(col + 1)
    } else {
        source.chars().count().max(col + 1)
    };
    let _ = writeln!(
        out,
        "{BLUE}{:>width$} |{RESET} {}{RED}{}{}{RESET}",
        "",
        " ".repeat(col),
        "^".repeat(underline_end - col),
        if label.is_empty() {
            String::new()
        } else {
            format!(" {label}")
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cell;

    #[test]
    fn positions_map_back_through_the_rewrite() {
        let original = "let x = 1;\nlet y: u8 = sleep(d).await;";
        let prepared = cell::prepare(original);
        // `sleep` in the rewritten second line.
        let line2 = prepared.code.lines().nth(1).unwrap();
        let col = line2.find("sleep").unwrap() + 1;
        assert_eq!(to_original(&prepared, original, 2, col), (1, 12));
    }

    #[test]
    fn span_rendering_underlines_the_user_line() {
        let mut out = String::new();
        render_span(
            &mut out,
            "let x = 1;\nlet y: u8 = \"a\";",
            (1, 12),
            (1, 15),
            "expected `u8`",
        );
        assert!(out.contains("2 |"), "{out}");
        assert!(out.contains("let y: u8 = \"a\";"), "{out}");
        assert!(out.contains("^^^ expected `u8`"), "{out}");
    }
}
