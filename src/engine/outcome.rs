//! The verdict on a cell once it has compiled and run (or died trying): panics, interrupts,
//! `?` errors and a dead evaluation process become the error the user sees. Shared by cells run
//! through evcxr and by the fast lane.

use super::errors::ErrorInfo;
use super::router::CellState;
use std::time::Duration;

/// How long a cell may keep running after an interrupt reached it before the evaluation
/// process is restarted (the cell is stuck in code with no `.await` to cancel at).
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// `src/lib.rs:LINE:COL` of the generated source -> `cell line N`. User lines are usually
/// copied verbatim; when rustloop rewrote the line (a final expression becomes
/// `(&(e)).evcxr_display()`, `.await` becomes `rustloop::__await(..)`, statements move into the
/// store's closure), the cell line is found from the code at the panic's column instead.
pub fn cell_location(location: &str, generated: &str, cell: &str) -> String {
    let mut parts = location.rsplitn(3, ':');
    let (Some(col), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return location.to_owned();
    };
    let Some(text) = line
        .parse::<usize>()
        .ok()
        .filter(|_| file.ends_with("src/lib.rs"))
        .and_then(|n| generated.lines().nth(n.saturating_sub(1)))
    else {
        return location.to_owned();
    };
    let cell_lines: Vec<&str> = cell.lines().collect();
    let trimmed = text.trim();
    if let Some(i) = cell_lines
        .iter()
        .position(|l| !trimmed.is_empty() && l.trim() == trimmed)
    {
        return format!("cell line {}", i + 1);
    }
    // The code from the panic's column on (`panic!("boom"))).evcxr_display()`): the cell line
    // holding the longest start of it wins.
    let from = col
        .parse::<usize>()
        .ok()
        .and_then(|c| text.char_indices().nth(c.saturating_sub(1)))
        .map_or(trimmed, |(byte, _)| &text[byte..]);
    let mut best: Option<(usize, usize)> = None; // (matched chars, cell line)
    for (i, line) in cell_lines.iter().enumerate() {
        let matched = from
            .char_indices()
            .map(|(b, c)| b + c.len_utf8())
            .take_while(|&end| line.contains(&from[..end]))
            .last()
            .unwrap_or(0);
        if best.is_none_or(|(m, _)| matched > m) {
            best = Some((matched, i));
        }
    }
    match best {
        // A few characters (`x`, `v[`) could come from any line; a macro name or a call can not.
        Some((matched, i)) if matched >= 4 || (matched > 0 && matched == from.trim_end().len()) => {
            format!("cell line {}", i + 1)
        }
        _ => "code rustloop generated for this cell".to_owned(),
    }
}

/// The verdict on a cell that compiled and ran (or started to).
pub fn judge_run(state: &CellState, label: &str) -> Option<ErrorInfo> {
    if state.interrupted_at_await {
        return Some(ErrorInfo::new(
            "KeyboardInterrupt",
            format!(
                "cell {label} was interrupted while waiting at `.await`; the awaited future was \
                 dropped (cancelled). Variables from earlier cells and background tasks are kept; \
                 variables this cell had just defined are not."
            ),
        ));
    }
    if let Some(panic) = &state.panic {
        let mut info = ErrorInfo::new("panic", panic.message.clone());
        info.traceback = vec![
            format!("\x1b[1;31mpanic\x1b[0m: {}", panic.message),
            format!(
                "  at {} (in cell {label}). Variables from earlier cells are kept; \
                 variables this cell had just defined are not.",
                panic.location
            ),
        ];
        return Some(info);
    }
    if state.evcxr_panic {
        return Some(ErrorInfo::new("panic", "the cell panicked"));
    }
    if state.question_mark_error {
        return Some(ErrorInfo::new(
            "Error",
            "the cell returned early through `?` with the error printed above",
        ));
    }
    None
}

pub fn interrupted_while_compiling() -> ErrorInfo {
    ErrorInfo::new(
        "KeyboardInterrupt",
        "interrupted while compiling; the cell did not run and all variables are kept",
    )
}

/// The evaluation process ended during the cell. `restarted`: evcxr has already started a new
/// one (else one is starting, as after a fast-lane cell).
pub fn evaluator_died(
    state: &CellState,
    message: &str,
    lost: &[String],
    restarted: bool,
) -> ErrorInfo {
    let lost = if lost.is_empty() {
        "No variables were defined.".to_owned()
    } else {
        format!(
            "These variables were lost: {}. Functions, types, `use` items and `:dep` crates \
             are kept; background tasks were stopped.",
            lost.join(", ")
        )
    };
    if state.killed_for_interrupt {
        return ErrorInfo::new(
            "KeyboardInterrupt",
            format!(
                "the cell did not reach an `.await` within {} s of the interrupt (it was busy in \
                 code that cannot be cancelled), so the evaluation process was restarted. {lost}",
                INTERRUPT_GRACE.as_secs()
            ),
        );
    }
    if state.runtime_changed {
        // Not a failure of the cell: the caller says why and runs the cell again.
        return ErrorInfo::new("EvaluatorRestarted", lost);
    }
    let detail = match state.exit_status {
        Some(status) => format!("exit status: {status}"),
        None => message.trim().lines().last().unwrap_or("").to_owned(),
    };
    let (ename, what) = match &state.crash_signal {
        Some(signal) => ("EvaluatorCrashed", format!("crashed with {signal}")),
        None if detail.contains("signal") => ("EvaluatorCrashed", format!("crashed ({detail})")),
        None => (
            "EvaluatorExited",
            format!("exited ({detail}; e.g. `std::process::exit` in the cell)"),
        ),
    };
    let next = if restarted {
        "A new one has been started"
    } else {
        "A new one is starting (the next cell waits for it)"
    };
    ErrorInfo::new(
        ename,
        format!("the evaluation process {what}. {next} and the kernel is still running. {lost}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_locations_point_at_cell_lines() {
        let generated = "fn run() {\nlet v = vec![1];\nlet y = v[5];\n}";
        let cell = "let v = vec![1];\nlet y = v[5];";
        assert_eq!(
            cell_location("src/lib.rs:3:9", generated, cell),
            "cell line 2"
        );
        assert_eq!(
            cell_location("/home/x/.cargo/registry/src/a.rs:3:9", generated, cell),
            "/home/x/.cargo/registry/src/a.rs:3:9"
        );
    }

    #[test]
    fn panic_in_a_rewritten_line_points_at_the_cell_line() {
        // `panic!("boom")` alone: the final expression is wrapped for display.
        let generated = "{\nlet __rustloop_run = ::std::panic::catch_unwind(|| {\n\
                         (&(panic!(\"boom\"))).evcxr_display();\n}));\n}";
        let cell = "// a comment\npanic!(\"boom\")";
        assert_eq!(
            cell_location("src/lib.rs:3:4", generated, cell),
            "cell line 2"
        );
        // A column in generated text that is not the cell's.
        assert_eq!(
            cell_location("src/lib.rs:2:5", generated, cell),
            "code rustloop generated for this cell"
        );
    }

    #[test]
    fn interrupt_at_await_is_a_keyboard_interrupt() {
        let state = CellState {
            interrupted_at_await: true,
            ..CellState::default()
        };
        let error = judge_run(&state, "[3]").unwrap();
        assert_eq!(error.ename, "KeyboardInterrupt");
        assert!(error.evalue.contains("[3]"));
    }

    #[test]
    fn evaluator_death_names_lost_variables() {
        let state = CellState {
            crash_signal: Some("SIGSEGV".into()),
            ..CellState::default()
        };
        let error = evaluator_died(
            &state,
            "Subprocess terminated",
            &["a".into(), "b".into()],
            true,
        );
        assert_eq!(error.ename, "EvaluatorCrashed");
        assert!(error.evalue.contains("SIGSEGV"));
        assert!(error.evalue.contains("a, b"));
    }
}
