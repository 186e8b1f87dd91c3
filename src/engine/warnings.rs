//! Compiler warnings worth showing under a cell.
//!
//! evcxr discards the warnings of cells that compile. The cell build (`wrapper.rs`) keeps, from
//! rustc's JSON diagnostics, the warnings of a few lints that point at real mistakes (chiefly
//! `unused_must_use`: "futures do nothing unless you `.await` or poll them", the counterpart of
//! Python's "coroutine was never awaited"), and the router shows them against the user's own
//! lines when the cell starts.

use std::io::Write;
use std::path::Path;

/// Lints whose warnings are shown.
const SHOWN_LINTS: &[&str] = &[
    "unused_must_use",
    "unreachable_code",
    "deprecated",
    "overflowing_literals",
    "unconditional_recursion",
    "arithmetic_overflow",
];

pub fn keep_warnings(stderr: &[u8], file: &Path) {
    let mut kept = String::new();
    for line in String::from_utf8_lossy(stderr).lines() {
        let Ok(diagnostic) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if diagnostic["level"] == "warning"
            && diagnostic["code"]["code"]
                .as_str()
                .is_some_and(|code| SHOWN_LINTS.contains(&code))
        {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if !kept.is_empty()
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
    {
        let _ = f.write_all(kept.as_bytes());
    }
}

/// Renders the kept warnings that point at lines of `cell`, once each.
pub fn render(file: &Path, cell: &str) -> String {
    let Ok(text) = std::fs::read_to_string(file) else {
        return String::new();
    };
    let lines: Vec<&str> = cell.lines().collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for diagnostic in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let Some(span) = diagnostic["spans"]
            .as_array()
            .and_then(|spans| spans.iter().find(|s| s["is_primary"] == true))
        else {
            continue;
        };
        let source = span["text"][0]["text"].as_str().unwrap_or("");
        // The cell's lines appear verbatim in the generated source; find which one this is.
        let Some(line) = lines
            .iter()
            .position(|l| l.trim() == source.trim() && !l.trim().is_empty())
        else {
            continue;
        };
        let message = diagnostic["message"].as_str().unwrap_or("");
        if !seen.insert((line, message.to_owned())) {
            continue;
        }
        // Column within the user's line: the same text, so the same offset from its start.
        let shift = lines[line].find(source.trim()).unwrap_or(0) as i64
            - source.find(source.trim()).unwrap_or(0) as i64;
        let start =
            (span["text"][0]["highlight_start"].as_i64().unwrap_or(1) - 1 + shift).max(0) as usize;
        let end =
            (span["text"][0]["highlight_end"].as_i64().unwrap_or(2) - 1 + shift).max(0) as usize;
        let number = (line + 1).to_string();
        let pad = " ".repeat(number.len());
        out.push_str(&format!(
            "\x1b[1;33mwarning\x1b[0m: {message}\n{pad}\x1b[1;34m-->\x1b[0m cell line {number}\n\
             {pad} \x1b[1;34m|\x1b[0m\n{number} \x1b[1;34m|\x1b[0m {}\n{pad} \x1b[1;34m|\x1b[0m \
             {}\x1b[1;33m{}\x1b[0m\n",
            lines[line],
            " ".repeat(start),
            "^".repeat(end.saturating_sub(start).max(1)),
        ));
        for child in diagnostic["children"].as_array().into_iter().flatten() {
            if let Some(note) = child["message"].as_str()
                && !note.starts_with("`#[warn(")
            {
                out.push_str(&format!(
                    "{pad} \x1b[1;34m=\x1b[0m {}: {note}\n",
                    child["level"].as_str().unwrap_or("note")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIAGNOSTIC: &str = r#"{"$message_type":"diagnostic","message":"unused implementer of `Future` that must be used","code":{"code":"unused_must_use","explanation":null},"level":"warning","spans":[{"file_name":"src/lib.rs","is_primary":true,"text":[{"text":"    nested();","highlight_start":5,"highlight_end":13}]}],"children":[{"message":"futures do nothing unless you `.await` or poll them","level":"note"},{"message":"`#[warn(unused_must_use)]` on by default","level":"note"}]}"#;

    #[test]
    fn keeps_only_listed_lints_and_maps_to_cell_lines() {
        let dir = std::env::temp_dir().join(format!("rustloop-warn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.jsonl");
        let unused_var = DIAGNOSTIC.replace("unused_must_use", "unused_variables");
        let stderr = format!("{DIAGNOSTIC}\n{unused_var}\nnot json\n{DIAGNOSTIC}\n");
        keep_warnings(stderr.as_bytes(), &file);
        let text = render(&file, "async fn nested() -> u32 { 42 }\nnested();");
        assert_eq!(text.matches("warning").count(), 1, "{text}");
        assert!(text.contains("cell line 2"), "{text}");
        assert!(
            text.contains("futures do nothing unless you `.await`"),
            "{text}"
        );
        assert!(text.contains("\x1b[1;33m^^^^^^^^"), "{text}");
        assert!(!text.contains("#[warn"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
