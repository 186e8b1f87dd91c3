//! One cell through evcxr: rewritten around the variable store, compiled (again, without the
//! keeps that cannot compile), run, judged, and its variables recorded. Also rustloop's own
//! commands (`:tasks`, `:vars`) and `user_expressions`.

use super::cell::{self, OwnCommand};
use super::errors::{self, ErrorInfo};
use super::outcome::{evaluator_died, interrupted_while_compiling, judge_run};
use super::router::{CellState, InputWaiter, Router};
use super::store::{self, Definitions, Epoch, Plan, ProbeJob, Variables};
use super::{Execute, Outcome, Output};
use evcxr::{CommandContext, EvalCallbacks};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

/// What running a cell needs from the engine.
pub struct CellRun<'a> {
    pub router: &'a Router,
    pub warnings_file: &'a Path,
    pub variables: &'a Mutex<Variables>,
}

impl CellRun<'_> {
    /// The cell crate's definitions as the rustc wrapper last recorded them.
    pub fn definitions(&self) -> Definitions {
        Definitions::read(&super::store::types_file(self.warnings_file))
    }

    /// Rewrites a cell around the store (`lane`: for the fast lane's crate), and says which
    /// variables it drops because a type they involve was redefined.
    pub fn plan(
        &self,
        prepared: &cell::Prepared,
        skip: &BTreeMap<String, String>,
        lane: bool,
    ) -> Option<Plan> {
        let definitions = self.definitions();
        let mut variables = self.variables.lock().unwrap();
        let plan = variables.plan(prepared, skip, lane, &definitions)?;
        if let Some(line) = variables.drop_stale(&plan) {
            self.router.emit(Output::Stream {
                stderr: false,
                text: line,
            });
        }
        Some(plan)
    }
}

/// Who handles a cell's panic and its top-level `?`: a planned cell does both itself
/// (`store/plan.rs`: one `catch_unwind` around its statements, inside the loaded variables, and
/// a closure returning `Result` when it uses `?`); any other code evcxr compiles inside its own
/// `catch_unwind`, and compiles again with `?` allowed after a type error (E0277). For a
/// planned cell that second compile could only fail the same way.
fn catch_panics_in(context: &mut CommandContext, plan: &Option<Plan>) {
    context.set_preserve_vars_on_panic(plan.is_none());
    context.set_question_mark_retry(plan.is_none());
}

/// How many times a cell is compiled again without keeps that did not compile.
const KEEP_RETRIES: usize = 3;

pub fn run_cell(cell_run: &CellRun, context: &mut CommandContext, execute: Execute) -> Outcome {
    let router = cell_run.router;
    let prepared = cell::prepare(&execute.code);
    let begin = || *router.state.lock().unwrap() = CellState::for_cell(&execute);
    begin();
    for command in &prepared.own_commands {
        match command {
            OwnCommand::Tasks => show_tasks(router),
            OwnCommand::Vars => router.emit(Output::Stream {
                stderr: false,
                text: cell_run.variables.lock().unwrap().table(),
            }),
        }
    }
    let has_evcxr_work = prepared
        .code
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"));
    let mut outcome = Outcome::default();
    if has_evcxr_work {
        let mut skip = BTreeMap::new();
        let mut attempt = 0;
        let (plan, mut error) = loop {
            let plan = cell_run.plan(&prepared, &skip, false);
            let code = plan.as_ref().map_or(&prepared, |p| &p.prepared);
            catch_panics_in(context, &plan);
            let mut compile_errors = Vec::new();
            let error = evaluate(cell_run, context, code, &execute, &mut compile_errors);
            if let Some(plan) = &plan
                && attempt < KEEP_RETRIES
                && let Some(failed) = Variables::keep_failures(plan, &compile_errors)
            {
                attempt += 1;
                skip = failed;
                begin();
                continue;
            }
            break (plan, error);
        };
        if error
            .as_ref()
            .is_some_and(|(_, state)| state.runtime_changed)
        {
            // The cell never ran; run it again on the fresh evaluation process.
            let lost = error
                .as_ref()
                .map(|(e, _)| e.evalue.clone())
                .unwrap_or_default();
            router.emit(Output::Stream {
                stderr: true,
                text: format!(
                    "rustloop: a `:dep` changed the version or features of a crate the shared \
                     runtime uses (tokio), so the runtime library was rebuilt and the evaluation \
                     process restarted. {lost}\n"
                ),
            });
            begin();
            let code = plan.as_ref().map_or(&prepared, |p| &p.prepared);
            catch_panics_in(context, &plan);
            error = evaluate(cell_run, context, code, &execute, &mut Vec::new());
        }
        if let Some(plan) = &plan {
            let state = error.as_ref().map(|(_, state)| state);
            if let Some(line) = settle_variables(cell_run, plan, &execute.label, state) {
                router.emit(Output::Stream {
                    stderr: false,
                    text: line,
                });
            }
            if let Some((e, _)) = &mut error {
                explain_unusable(cell_run, plan, e);
            }
        }
        outcome.error = error.map(|(e, _)| e);
    }
    if outcome.error.is_none() && !execute.user_expressions.is_empty() {
        outcome.user_expressions = user_expressions(cell_run, context, &execute);
    }
    router.state.lock().unwrap().executing = None;
    outcome
}

/// Brings the record of variables up to date after a cell (`state`: how it failed, if it did);
/// the line to show about variables that ended with it.
pub fn settle_variables(
    cell_run: &CellRun,
    plan: &Plan,
    label: &str,
    state: Option<&CellState>,
) -> Option<String> {
    let Some(state) = state else {
        let epoch = match plan.epoch {
            Epoch::Lane => Epoch::Lane,
            Epoch::Ctx(_) => cell_run.definitions().now(),
        };
        let probe = ProbeJob::take(cell_run.warnings_file);
        let mut variables = cell_run.variables.lock().unwrap();
        return variables.record(plan, label, probe, epoch);
    };
    let mut variables = cell_run.variables.lock().unwrap();
    if state.died {
        variables.clear();
        return None;
    }
    if let Some(name) = state.panic.as_ref().and_then(|p| {
        p.message
            .strip_prefix(rustloop_redefined_prefix())?
            .strip_prefix('`')?
            .split('`')
            .next()
    }) {
        variables.forget(name);
    }
    if state.run.is_some() {
        variables.record_unfinished(plan);
    }
    None
}

/// The start of the panic message of a variable whose type was redefined (runtime/src/store/mod.rs).
fn rustloop_redefined_prefix() -> &'static str {
    "rustloop: the variable "
}

/// A compile error about an earlier variable that a later cell cannot use (its type cannot be
/// written, or it is no longer kept) says why.
fn explain_unusable(cell_run: &CellRun, plan: &Plan, error: &mut ErrorInfo) {
    let variables = cell_run.variables.lock().unwrap();
    let mut notes = Vec::new();
    for name in &plan.unusable {
        if let Some(variable) = variables.get(name)
            && let store::Ty::Unnamed(ty) = &variable.ty
        {
            notes.push((
                name.clone(),
                format!(
                    "`{name}` (from cell {}) is kept, but its type `{ty}` cannot be written in \
                     Rust, so later cells cannot use it; box it where it is made (e.g. as a \
                     trait object)",
                    variable.cell
                ),
            ));
        }
    }
    for name in variables.ended_names() {
        if let Some((cell, why)) = variables.ended(&name) {
            notes.push((
                name.clone(),
                format!("`{name}` (from cell {cell}) is no longer kept ({why})"),
            ));
        }
    }
    for (name, note) in notes {
        if error.evalue.contains(&format!("`{name}`")) {
            error.traceback.push(note.clone());
            error.evalue.push_str(&format!(" ({note})"));
        }
    }
}

/// Runs prepared code through evcxr; on failure, the error and the cell's final state.
/// `compile_errors` receives rustc's errors, if that is how it failed.
fn evaluate(
    cell_run: &CellRun,
    context: &mut CommandContext,
    prepared: &cell::Prepared,
    execute: &Execute,
    compile_errors: &mut Vec<evcxr::CompilationError>,
) -> Option<(ErrorInfo, CellState)> {
    let router = cell_run.router;
    let _ = std::fs::remove_file(cell_run.warnings_file);
    store::drop_job(cell_run.warnings_file);
    if prepared
        .code
        .lines()
        .any(|l| l.trim_start().starts_with(':'))
    {
        // `:dep`, `:opt`, `:linker`...: the build changes beyond the cell's source.
        super::wrapper::BuildJob::forget(cell_run.warnings_file);
    }
    let variables_before = cell_run.variables.lock().unwrap().names();
    let input_router = router;
    let mut callbacks = EvalCallbacks {
        // evcxr's request type is not exported; its fields are.
        input_reader: &move |request| {
            evcxr_input(input_router, request.prompt.clone(), request.is_password)
        },
    };
    let result = context.execute_with_callbacks(&prepared.code, &mut callbacks);
    if let Ok(outputs) = &result {
        tracing::debug!("phases: {:?}", outputs.phases);
    }
    let mut state = {
        let mut state = router.state.lock().unwrap();
        let executing = state.executing;
        let taken = std::mem::take(&mut *state);
        state.executing = executing;
        taken
    };
    if let Some(panic) = &mut state.panic
        && let Ok(source) = context.last_source()
    {
        panic.location = super::outcome::cell_location(&panic.location, &source, &execute.code);
    }
    let error = match result {
        Ok(outputs) => {
            // Output of evcxr's own commands (`:help`, ...).
            if !outputs.content_by_mime_type.is_empty() {
                let data: Map<String, Value> = outputs
                    .content_by_mime_type
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                router.emit(Output::Result {
                    data,
                    metadata: Map::new(),
                });
            }
            if let Some(timing) = outputs.timing {
                router.emit(Output::Stream {
                    stderr: false,
                    text: format!("Took {}ms\n", timing.as_millis()),
                });
            }
            judge_run(&state, &execute.label)
        }
        Err(evcxr::Error::CompilationErrors(errors)) => {
            let info = if state.interrupt_requested {
                interrupted_while_compiling()
            } else {
                errors::compile_errors(&errors, prepared, &execute.code)
            };
            *compile_errors = errors;
            Some(info)
        }
        Err(evcxr::Error::SubprocessTerminated(message)) => {
            state.died = true;
            Some(evaluator_died(&state, &message, &variables_before, true))
        }
        Err(other) => Some(if state.interrupt_requested && state.run.is_none() {
            interrupted_while_compiling()
        } else {
            ErrorInfo::new("Error", other.to_string())
        }),
    };
    error.map(|e| (e, state))
}

/// Answers evcxr's own input protocol (`evcxr_input::get_string`).
pub fn evcxr_input(router: &Router, prompt: String, password: bool) -> String {
    let (tx, rx) = mpsc::channel();
    {
        let mut state = router.state.lock().unwrap();
        if !state.allow_stdin {
            drop(state);
            router.emit(Output::Stream {
                stderr: true,
                text: "input is not available: this client does not accept input \
                       (allow_stdin: false); an empty string was returned\n"
                    .to_owned(),
            });
            return String::new();
        }
        state.input = InputWaiter::Evcxr(tx);
    }
    router.emit(Output::InputRequest { prompt, password });
    rx.recv().ok().and_then(Result::ok).unwrap_or_default()
}

fn show_tasks(router: &Router) {
    let reply = router.request_tasks();
    let text = match reply.recv_timeout(Duration::from_secs(2)) {
        Err(_) => "No tasks: the runtime has not started yet (no cell has run).\n".to_owned(),
        Ok(tasks) => {
            let tasks = tasks.as_array().cloned().unwrap_or_default();
            if tasks.is_empty() {
                "No live tasks.\n".to_owned()
            } else {
                let mut text = format!("{} live task(s):\n", tasks.len());
                text.push_str("  task   cell    age\n");
                for task in tasks {
                    let cell = task["run"]
                        .as_u64()
                        .and_then(|run| router.label_of_run(run))
                        .unwrap_or_else(|| "?".to_owned());
                    text.push_str(&format!(
                        "  {:<6} {:<7} {:.1}s\n",
                        task["id"].as_str().unwrap_or("?"),
                        cell,
                        task["age_secs"].as_f64().unwrap_or(0.0),
                    ));
                }
                text
            }
        }
    };
    router.emit(Output::Stream {
        stderr: false,
        text,
    });
}

/// Evaluates `user_expressions` after a successful cell; each result is a MIME bundle.
fn user_expressions(
    cell_run: &CellRun,
    context: &mut CommandContext,
    execute: &Execute,
) -> Map<String, Value> {
    let router = cell_run.router;
    let mut results = Map::new();
    for (name, expression) in &execute.user_expressions {
        let prepared = cell::prepare(expression);
        let plan = cell_run.plan(&prepared, &BTreeMap::new(), false);
        catch_panics_in(context, &plan);
        let prepared = plan.map_or(prepared, |plan| plan.prepared);
        {
            let mut state = router.state.lock().unwrap();
            *state = CellState {
                executing: Some(execute.id),
                label: execute.label.clone(),
                capture: Some(Map::new()),
                ..CellState::default()
            };
        }
        let result = context.execute(&prepared.code);
        let state = std::mem::take(&mut *router.state.lock().unwrap());
        let value = match result {
            Ok(_) => match judge_run(&state, &execute.label) {
                None => json!({
                    "status": "ok",
                    "data": state.capture.unwrap_or_default(),
                    "metadata": {},
                }),
                Some(e) => {
                    json!({"status": "error", "ename": e.ename, "evalue": e.evalue, "traceback": e.traceback})
                }
            },
            Err(e) => {
                let info = match e {
                    evcxr::Error::CompilationErrors(errors) => {
                        errors::compile_errors(&errors, &prepared, expression)
                    }
                    other => ErrorInfo::new("Error", other.to_string()),
                };
                json!({"status": "error", "ename": info.ename, "evalue": info.evalue, "traceback": info.traceback})
            }
        };
        results.insert(name.clone(), value);
    }
    results
}
