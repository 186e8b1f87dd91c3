//! rustloop as cargo's `RUSTC_WRAPPER` for cell builds: compiler warnings worth showing under a
//! cell, the job for the variable store's type probe, and a `TypeId` that changes when a type
//! is redefined (`TypeGeneration`).
//!
//! evcxr discards the warnings of cells that compile. rustloop runs as cargo's `RUSTC_WRAPPER`
//! for cell builds: for the cell crate it tees rustc's JSON diagnostics, keeping the warnings of
//! a few lints that point at real mistakes (chiefly `unused_must_use`: "futures do nothing
//! unless you `.await` or poll them", the counterpart of Python's "coroutine was never
//! awaited"), and the evaluator shows them against the user's own lines.

use std::io::Write;
use std::path::Path;

/// Set in cargo's environment to make this binary act as the rustc wrapper.
pub const WRAPPER_ENV: &str = "RUSTLOOP_RUSTC_WRAPPER";
/// Where the wrapper appends kept diagnostics (JSON lines).
pub const WARNINGS_FILE_ENV: &str = "RUSTLOOP_WARNINGS_FILE";

/// Lints whose warnings are shown.
const SHOWN_LINTS: &[&str] = &[
    "unused_must_use",
    "unreachable_code",
    "deprecated",
    "overflowing_literals",
    "unconditional_recursion",
    "arithmetic_overflow",
];

/// If cargo started this process as the rustc wrapper, runs rustc and never returns.
pub fn run_if_rustc_wrapper() {
    if std::env::var_os(WRAPPER_ENV).is_none() {
        return;
    }
    let mut args = std::env::args_os().skip(1);
    let Some(rustc) = args.next() else {
        eprintln!("rustloop: rustc wrapper called without a compiler");
        std::process::exit(2);
    };
    let args: Vec<_> = args.collect();
    let is_cell = args
        .windows(2)
        .any(|w| w[0] == "--crate-name" && (w[1] == "ctx" || w[1] == "rustloop_fast"));
    let file = std::env::var_os(WARNINGS_FILE_ENV);
    let (true, Some(file)) = (is_cell, file) else {
        use std::os::unix::process::CommandExt;
        let error = std::process::Command::new(&rustc).args(&args).exec();
        eprintln!("rustloop: cannot run {}: {error}", rustc.to_string_lossy());
        std::process::exit(2);
    };
    let mut args = args;
    let mut type_state = None;
    if let Some(source) = args
        .iter()
        .find(|a| a.to_string_lossy().ends_with("src/lib.rs"))
        .map(std::path::PathBuf::from)
    {
        let text = std::fs::read_to_string(&source).ok();
        let is_evcxr_cell = args
            .windows(2)
            .any(|w| w[0] == "--crate-name" && w[1] == "ctx");
        if is_evcxr_cell && let Some(text) = text {
            let types = TypeGeneration::new(&text, types_file(Path::new(&file)));
            // Cargo's own metadata hashes the dependencies too, so a `:dep` would change every
            // `TypeId` of the crate and kept values of its types could no longer be read.
            args = without_metadata(args);
            args.push("-C".into());
            args.push(format!("metadata=rustloop-types-{}", types.generation).into());
            type_state = Some(types);
        }
    }
    let output = match std::process::Command::new(&rustc)
        .args(&args)
        .stdin(std::process::Stdio::inherit())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("rustloop: cannot run {}: {e}", rustc.to_string_lossy());
            std::process::exit(2);
        }
    };
    let _ = std::io::stderr().write_all(&output.stderr);
    keep_warnings(&output.stderr, Path::new(&file));
    if output.status.success()
        && let Some(source) = args
            .iter()
            .find(|a| a.to_string_lossy().ends_with("src/lib.rs"))
    {
        super::store::save_job(
            Path::new(&rustc),
            &args,
            Path::new(source),
            Path::new(&file),
        );
    }
    if let Some(types) = type_state
        && output.status.success()
    {
        // Only definitions that compiled count (evcxr discards a cell that does not).
        types.commit();
    }
    std::process::exit(output.status.code().unwrap_or(1));
}

/// `args` without `-C metadata=...`.
fn without_metadata(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter().peekable();
    while let Some(arg) = iter.next() {
        if arg == "-C"
            && iter
                .peek()
                .is_some_and(|next| next.to_string_lossy().starts_with("metadata="))
        {
            iter.next();
            continue;
        }
        if arg.to_string_lossy().starts_with("-Cmetadata=") {
            continue;
        }
        out.push(arg);
    }
    out
}

/// Where the wrapper remembers the cell crate's type definitions (next to the warnings file).
pub fn types_file(warnings_file: &Path) -> std::path::PathBuf {
    warnings_file.with_file_name(".rustloop-types.json")
}

/// A generation number for the cell crate's type definitions, added to its `-C metadata`.
/// Builds that compiled with different definitions never share a generation (and so never
/// share `TypeId`s); a build that failed stored no values and is forgotten.
///
/// evcxr builds every cell as crate `ctx` with the same metadata, so `ctx::Foo` has the same
/// `TypeId` in every cell even after `struct Foo` is redefined with different fields; evcxr's
/// variable store checks `TypeId`s, and a value kept under the old definition would be read as
/// the new one (memory corruption in safe code). The generation goes up when a type, trait or
/// module already seen is defined differently; then every `TypeId` of the crate changes and
/// evcxr drops the kept variables of the crate's types (and says so) instead of misreading
/// them. New definitions and other cells leave it alone, so values carry over as before.
struct TypeGeneration {
    generation: u64,
    state: serde_json::Value,
    file: std::path::PathBuf,
}

impl TypeGeneration {
    fn new(source: &str, file: std::path::PathBuf) -> TypeGeneration {
        let mut state: serde_json::Value = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .filter(|s: &serde_json::Value| s["types"].is_object())
            .unwrap_or_else(|| serde_json::json!({"generation": 0, "types": {}}));
        let mut generation = state["generation"].as_u64().unwrap_or(0);
        let mut changed = Vec::new();
        for (name, text) in super::store::type_definitions(source) {
            let known = &mut state["types"][&name];
            if known.as_str().is_some_and(|old| old != text) {
                changed.push(name);
            }
            *known = serde_json::Value::String(text);
        }
        if !changed.is_empty() {
            generation += 1;
            state["generation"] = generation.into();
            // Which definitions changed, for the variable store (see `store::epoch`).
            state["changed"][generation.to_string()] = changed.into();
        }
        TypeGeneration {
            generation,
            state,
            file,
        }
    }

    /// Remembers these definitions as the current ones.
    fn commit(&self) {
        let _ = std::fs::write(&self.file, self.state.to_string());
    }
}

fn keep_warnings(stderr: &[u8], file: &Path) {
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
    fn type_generation_moves_only_when_a_known_type_is_redefined() {
        let dir = std::env::temp_dir().join(format!("rustloop-types-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("types.json");
        let build = |types: &str, compiled: bool| {
            let source = format!("{types}\nfn f() -> u8 {{ 1 }}\nfn run() {{ let x = 1; }}");
            let generation = TypeGeneration::new(&source, state.clone());
            if compiled {
                generation.commit();
            }
            generation.generation
        };
        assert_eq!(build("struct Foo { a: u64 }", true), 0);
        // other code, and a new type: same identity, kept values stay readable
        assert_eq!(build("struct Foo { a: u64 }", true), 0);
        assert_eq!(build("struct Foo { a: u64 }\nenum Bar { A }", true), 0);
        // a redefinition that does not compile changes nothing for later builds
        assert_eq!(build("struct Foo { a: Strin }\nenum Bar { A }", false), 1);
        assert_eq!(build("struct Foo { a: u64 }\nenum Bar { A }", true), 0);
        // a redefinition that compiles: a new identity, once
        assert_eq!(build("struct Foo { a: String }\nenum Bar { A }", true), 1);
        assert_eq!(build("struct Foo { a: String }\nenum Bar { A }", true), 1);
        // going back is a change too: generations never repeat
        assert_eq!(build("struct Foo { a: u64 }\nenum Bar { A }", true), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

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
