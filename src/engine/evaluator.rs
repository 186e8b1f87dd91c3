//! The evaluator thread: evcxr's `CommandContext` lives here, is warmed up in the background
//! (the kernel answers `kernel_info` meanwhile), and runs one request at a time. [`Engine`] is
//! the handle the kernel layer holds; its interrupt and input methods work while a cell runs.

use super::cache::Slot;
use super::cell::{self, OwnCommand};
use super::child::{LINK_ENV, RUNTIME_LIBRARY_ENV};
use super::errors::{self, ErrorInfo};
use super::fast_lane::FastLane;
use super::link::Link;
use super::router::{CellState, InputWaiter, Router};
use super::{Completions, Event, EventSink, Execute, Inspection, Outcome, Output};
use anyhow::{Context, Result};
use evcxr::{CommandContext, EvalCallbacks, EvalContext};
use serde_json::{Map, Value, json};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a cell may keep running after an interrupt reached it before the evaluation
/// process is restarted (the cell is stuck in code with no `.await` to cancel at).
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// RUSTFLAGS of every cell build: `-Cprefer-dynamic` is evcxr's own flag (we replace
/// RUSTFLAGS wholesale); `tokio_unstable` enables the task hooks behind `:tasks`.
pub(super) const CELL_RUSTFLAGS: &str = "-Cprefer-dynamic --cfg tokio_unstable";

/// The dependencies every cell has, as Cargo.toml `name = spec` pairs.
pub(super) fn cell_dependencies(slot: &Slot) -> [(String, String); 2] {
    [
        (
            "tokio".to_owned(),
            r#"{ version = "1", features = ["full"] }"#.to_owned(),
        ),
        (
            "rustloop-runtime".to_owned(),
            format!(
                "{{ path = {} }}",
                Value::from(slot.runtime_dir.to_string_lossy().into_owned())
            ),
        ),
    ]
}

enum Request {
    Execute(Execute),
    Complete {
        code: String,
        cursor: usize,
        reply: oneshot::Sender<Completions>,
    },
    Inspect {
        code: String,
        cursor: usize,
        reply: oneshot::Sender<Inspection>,
    },
}

/// Handle to the evaluation engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    requests: Mutex<mpsc::Sender<Request>>,
    router: Arc<Router>,
    /// The evaluation process (stable across evcxr's restarts of it).
    child: Mutex<Option<Arc<Mutex<std::process::Child>>>>,
    warm: AtomicBool,
    cold_cache: bool,
    warnings_file: std::path::PathBuf,
    link: Arc<Link>,
    fast_lane: FastLane,
}

impl Engine {
    /// Starts the engine: binds the link, then warms evcxr up on the evaluator thread. Must be
    /// called inside the kernel's tokio runtime.
    pub fn start(sink: EventSink, slot: Slot) -> Result<Engine> {
        let warnings_file = slot.dir.join(".rustloop-warnings.jsonl");
        // Type definitions of an earlier session in this slot mean nothing now.
        let _ = std::fs::remove_file(super::warnings::types_file(&warnings_file));
        let router = Router::new(sink, warnings_file.clone());
        let sink_router = router.clone();
        let link = Arc::new(Link::start(Arc::new(move |event| {
            sink_router.handle(event)
        }))?);
        router.set_link(link.clone());
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            requests: Mutex::new(tx),
            router,
            child: Mutex::new(None),
            warm: AtomicBool::new(false),
            cold_cache: !slot.is_warm(),
            fast_lane: FastLane::new(&slot, warnings_file.clone()),
            warnings_file,
            link: link.clone(),
        });
        let thread_inner = inner.clone();
        let link_path = link.path().to_owned();
        std::thread::Builder::new()
            .name("rustloop-evaluator".into())
            .spawn(move || evaluator_main(thread_inner, slot, link_path, rx))
            .context("starting the evaluator thread")?;
        Ok(Engine { inner })
    }

    /// Queues a cell. Its outputs and then `Event::Finished` arrive through the sink.
    pub fn execute(&self, request: Execute) {
        if !self.inner.warm.load(Ordering::SeqCst) && self.inner.cold_cache {
            self.inner.router.emit(Output::Stream {
                stderr: true,
                text: "rustloop: first session with this toolchain: compiling tokio and the \
                       rustloop runtime once (about a minute on 2 cores; later sessions start \
                       in about a second)...\n"
                    .to_owned(),
            });
        }
        if !self.inner.warm.load(Ordering::SeqCst)
            && self.inner.fast_lane.is_open()
            && request.user_expressions.is_empty()
            && let Some(parts) = cell::fast_lane_parts(&cell::prepare(&request.code))
        {
            let inner = self.inner.clone();
            let fallback = request.clone();
            let spawned = std::thread::Builder::new()
                .name("rustloop-fast-lane".into())
                .spawn(move || {
                    let id = request.id;
                    match inner
                        .fast_lane
                        .run(&inner.router, &inner.link, &request, parts)
                    {
                        Some(outcome) => {
                            inner.router.flush_carry();
                            (inner.router.sink())(Event::Finished { id, outcome });
                        }
                        None => {
                            let _ = inner
                                .requests
                                .lock()
                                .unwrap()
                                .send(Request::Execute(request));
                        }
                    }
                });
            match spawned {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!("cannot start the fast lane's thread: {e}");
                    self.send(Request::Execute(fallback));
                    return;
                }
            }
        }
        self.send(Request::Execute(request));
    }

    pub async fn complete(&self, code: String, cursor: usize) -> Completions {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Complete {
            code,
            cursor,
            reply,
        });
        rx.await.unwrap_or_default()
    }

    pub async fn inspect(&self, code: String, cursor: usize) -> Inspection {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Inspect {
            code,
            cursor,
            reply,
        });
        rx.await.unwrap_or_default()
    }

    fn send(&self, request: Request) {
        let _ = self.inner.requests.lock().unwrap().send(request);
    }

    /// Interrupts the running cell, if any. A cell waiting at `.await` is cancelled at once; a
    /// cell still compiling stops compiling; a cell stuck without an await point is stopped
    /// after [`INTERRUPT_GRACE`] by restarting the evaluation process.
    pub fn interrupt(&self) {
        let router = &self.inner.router;
        let mut state = router.state.lock().unwrap();
        let Some(id) = state.executing else { return };
        if state.interrupt_requested {
            return;
        }
        state.interrupt_requested = true;
        // Whoever waits for input gets an error instead.
        match std::mem::take(&mut state.input) {
            InputWaiter::Runtime => router.command(format!(
                "input_err {}",
                hex::encode("interrupted while waiting for input")
            )),
            InputWaiter::Evcxr(waiter) => {
                let _ = waiter.send(Err("interrupted".to_owned()));
            }
            InputWaiter::None => {}
        }
        match state.run {
            Some(run) => router.deliver_interrupt(&mut state, run),
            // The fast lane stops its own build (evcxr may be building its warm-up meanwhile).
            None if state.fast_lane => {}
            None => {
                // Still compiling: stop the build. (If the cell starts anyway, the interrupt is
                // delivered at its `cell_start`.)
                let child_pid = self.child_pid();
                drop(state);
                kill_build_processes(child_pid);
            }
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut state = inner.router.state.lock().unwrap();
                if state.executing != Some(id) {
                    return;
                }
                if let Some(at) = state.interrupt_delivered_at
                    && at.elapsed() >= INTERRUPT_GRACE
                {
                    state.killed_for_interrupt = true;
                    drop(state);
                    if let Some(child) = inner.child.lock().unwrap().as_ref() {
                        let _ = child.lock().unwrap().kill();
                    } else if let Some(pid) = inner.link.child_pid() {
                        // A fast-lane cell before evcxr has handed over its process handle.
                        // SAFETY: signalling the evaluation process we started.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                    return;
                }
            }
        });
    }

    fn child_pid(&self) -> Option<u32> {
        self.inner
            .child
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.lock().unwrap().id())
    }

    /// The user's answer to an [`Output::InputRequest`] (or why there is none).
    pub fn input_reply(&self, reply: Result<String, String>) {
        let router = &self.inner.router;
        let waiter = std::mem::take(&mut router.state.lock().unwrap().input);
        match waiter {
            InputWaiter::Runtime => {
                let line = match &reply {
                    Ok(text) => format!("input_ok {}", hex::encode(text)),
                    Err(e) => format!("input_err {}", hex::encode(e)),
                };
                router.command(line);
            }
            InputWaiter::Evcxr(waiter) => {
                let _ = waiter.send(reply);
            }
            InputWaiter::None => {}
        }
    }

    /// Stops the evaluation process (at kernel shutdown).
    pub fn shutdown(&self) {
        if let Some(child) = self.inner.child.lock().unwrap().as_ref() {
            let mut child = child.lock().unwrap();
            let _ = child.kill();
            let _ = child.wait();
        }
        self.inner.link.remove();
    }
}

fn evaluator_main(
    inner: Arc<Inner>,
    slot: Slot,
    link: std::path::PathBuf,
    requests: mpsc::Receiver<Request>,
) {
    let started = Instant::now();
    let mut warmed = warm_up(&inner, &slot, &link);
    // Cells that ran meanwhile on the fast lane: wait for one in flight, then evcxr takes over.
    let definitions = inner.fast_lane.close();
    if inner.fast_lane.child_died() {
        // A fast-lane cell crashed the evaluation process under evcxr: start evcxr afresh.
        tracing::info!("the evaluation process died during the warm-up; starting evcxr again");
        drop(warmed);
        warmed = warm_up(&inner, &slot, &link);
    }
    let mut context = match warmed {
        Ok(context) => {
            slot.mark_warm();
            tracing::info!("evaluator warm after {:?}", started.elapsed());
            Some(context)
        }
        Err(e) => {
            tracing::error!("evaluator failed to start: {e:#}");
            inner.router.emit(Output::Stream {
                stderr: true,
                text: format!("rustloop: the Rust evaluator could not start: {e:#}\n"),
            });
            None
        }
    };
    inner.router.warming.store(false, Ordering::SeqCst);
    inner.warm.store(true, Ordering::SeqCst);
    if let Some(context) = context.as_mut()
        && !definitions.is_empty()
    {
        // Definitions only: compiling them runs nothing.
        if let Err(e) = context.execute(&definitions) {
            tracing::warn!("definitions from the fast lane: {e}");
            inner.router.emit(Output::Stream {
                stderr: true,
                text: format!(
                    "rustloop: definitions made while the kernel was starting could not be                      carried over; run those cells again if later cells need them ({e})\n"
                ),
            });
        }
    }
    let pending = requests.try_recv().ok();
    if let Some(context) = context.as_mut()
        && pending.is_none()
    {
        // rust-analyzer (which evcxr uses to infer the types of `let` variables) builds its
        // picture of std and tokio on first use, about 2 s. Do that now, while the user is
        // still typing, rather than in their first cell with a `let`.
        let started = Instant::now();
        let _ = context.completions("let rustloop_warm_up = 1u8; rustloop_warm_up.", 44);
        tracing::info!("analysis warm after {:?}", started.elapsed());
    }
    let startup_error = "the Rust evaluator could not start (see the kernel log or the first \
                         cell's output); check that `cargo` and `rustc` work in this environment";
    for request in pending.into_iter().chain(requests.iter()) {
        match request {
            Request::Execute(execute) => {
                let id = execute.id;
                let outcome = match context.as_mut() {
                    Some(context) => run_cell(&inner, context, execute),
                    None => Outcome {
                        error: Some(ErrorInfo::new("EvaluatorUnavailable", startup_error)),
                        ..Outcome::default()
                    },
                };
                inner.router.flush_carry();
                (inner.router.sink())(Event::Finished { id, outcome });
            }
            Request::Complete {
                code,
                cursor,
                reply,
            } => {
                let result = context
                    .as_mut()
                    .map(|c| complete(c, &code, cursor))
                    .unwrap_or_default();
                let _ = reply.send(result);
            }
            Request::Inspect {
                code,
                cursor,
                reply,
            } => {
                let result = context.as_mut().and_then(|c| inspect(c, &code, cursor));
                let _ = reply.send(result);
            }
        }
    }
}

/// Starts evcxr with our evaluation process and makes tokio and the runtime crate part of
/// every cell.
fn warm_up(inner: &Inner, slot: &Slot, link: &std::path::Path) -> Result<CommandContext> {
    let toolchain = super::cache::toolchain()?;
    crate::set_toolchain_version(&toolchain.release);
    let deps = slot
        .dir
        .join("target")
        .join(&toolchain.host)
        .join("debug")
        .join("deps");
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.env(LINK_ENV, link);
    // evcxr moves each cell's library out of deps/, which breaks its relative RUNPATH; say
    // where libstd and the runtime library are.
    let mut library_path = std::ffi::OsString::from(&deps);
    library_path.push(":");
    library_path.push(&toolchain.target_libdir);
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        library_path.push(":");
        library_path.push(existing);
    }
    command.env("LD_LIBRARY_PATH", library_path);
    command.env(RUNTIME_LIBRARY_ENV, deps.join("librustloop.so"));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Die with the evaluator thread (the kernel), never linger as an orphan.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // Keep out of the kernel's process group: a SIGINT Jupyter sends the kernel's group
            // is turned into a cooperative interrupt instead of killing the evaluator.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let t0 = Instant::now();
    let (mut eval, outputs) = EvalContext::with_subprocess_command(command)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting evcxr")?;
    *inner.child.lock().unwrap() = Some(eval.process_handle());
    forward_evcxr_outputs(inner.router.clone(), outputs);

    let configure = |eval: &mut EvalContext, offline: bool| -> Result<()> {
        let mut state = eval.state();
        state.set_offline_mode(offline);
        // Cells compile at opt-level 0: fastest compiles; tokio is built the same way once.
        state
            .set_opt_level("0")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // `use rustloop as _;` stays in every cell evcxr compiles from now on: it makes each
        // cell link the runtime library, and with it the one shared tokio.
        state.set_build_env("RUSTFLAGS", CELL_RUSTFLAGS);
        // Run cell builds through this binary to keep the warnings evcxr would drop.
        if let Ok(exe) = std::env::current_exe() {
            state.set_build_env("RUSTC_WRAPPER", &exe.to_string_lossy());
            state.set_build_env(super::warnings::WRAPPER_ENV, "1");
            state.set_build_env(
                super::warnings::WARNINGS_FILE_ENV,
                &inner.warnings_file.to_string_lossy(),
            );
        }
        tracing::info!("warm-up: evcxr started after {:?}", t0.elapsed());
        let [(tokio, tokio_spec), _runtime] = cell_dependencies(slot);
        state
            .add_dep(&tokio, &tokio_spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        state
            .add_local_dep(&slot.runtime_dir.to_string_lossy())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!("warm-up: dependencies validated after {:?}", t0.elapsed());
        let outputs = eval
            .eval_with_state("use rustloop as _;", state)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!("warm-up phases: {:?}", outputs.phases);
        Ok(())
    };
    if slot.is_warm() {
        if let Err(e) = configure(&mut eval, true) {
            tracing::info!("offline warm-up failed ({e:#}); retrying online");
            configure(&mut eval, false)?;
        }
    } else {
        configure(&mut eval, false)?;
    }
    // Later `:dep` lines may need the network.
    let mut state = eval.state();
    state.set_offline_mode(false);
    eval.eval_with_state("", state)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(CommandContext::with_eval_context(eval))
}

/// evcxr's own stdout/stderr channels carry what the evaluation process printed outside our
/// pipes (startup errors); show it rather than lose it.
fn forward_evcxr_outputs(router: Arc<Router>, outputs: evcxr::EvalContextOutputs) {
    for (receiver, stderr) in [(outputs.stdout, false), (outputs.stderr, true)] {
        let router = router.clone();
        std::thread::spawn(move || {
            for line in receiver {
                tracing::debug!(stderr, "evaluation process: {line}");
                router.emit(Output::Stream {
                    stderr,
                    text: format!("{line}\n"),
                });
            }
        });
    }
}

fn run_cell(inner: &Inner, context: &mut CommandContext, execute: Execute) -> Outcome {
    let router = &inner.router;
    let prepared = cell::prepare(&execute.code);
    let begin = || *router.state.lock().unwrap() = CellState::for_cell(&execute);
    begin();
    for command in &prepared.own_commands {
        match command {
            OwnCommand::Tasks => show_tasks(router),
        }
    }
    let has_evcxr_work = prepared
        .code
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"));
    let mut outcome = Outcome::default();
    if has_evcxr_work {
        let mut error = evaluate(inner, context, &prepared, &execute);
        if let Some(annotated) = error
            .as_ref()
            .and_then(|(_, state)| state.stored_type_found.as_deref())
            .and_then(|ty| cell::annotate_macro_let(&execute.code, ty))
        {
            // The variable's type was guessed wrong (see `annotate_macro_let`); retry with
            // the type rustc found.
            let retry = Execute {
                code: annotated,
                ..execute.clone()
            };
            begin();
            error = evaluate(inner, context, &cell::prepare(&retry.code), &retry);
        }
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
            error = evaluate(inner, context, &prepared, &execute);
        }
        outcome.error = error.map(|(e, _)| e);
    }
    if outcome.error.is_none() && !execute.user_expressions.is_empty() {
        outcome.user_expressions = user_expressions(router, context, &execute);
    }
    router.state.lock().unwrap().executing = None;
    outcome
}

/// Runs prepared code through evcxr; on failure, the error and the cell's final state.
fn evaluate(
    inner: &Inner,
    context: &mut CommandContext,
    prepared: &cell::Prepared,
    execute: &Execute,
) -> Option<(ErrorInfo, CellState)> {
    let router = &inner.router;
    let _ = std::fs::remove_file(&inner.warnings_file);
    let variables_before: Vec<String> = context
        .variables_and_types()
        .map(|(name, _)| name.to_owned())
        .collect();
    let input_router = router.clone();
    let mut callbacks = EvalCallbacks {
        // evcxr's request type is not exported; its fields are.
        input_reader: &move |request| {
            evcxr_input(&input_router, request.prompt.clone(), request.is_password)
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
        panic.location = cell_location(&panic.location, &source, &execute.code);
    }
    let error = match result {
        Ok(outputs) => {
            // Output of evcxr's own commands (`:vars`, `:help`, ...).
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
            state.stored_type_found = errors::stored_type_mismatch(&errors);
            Some(if state.interrupt_requested {
                interrupted_while_compiling()
            } else {
                errors::compile_errors(&errors, prepared, &execute.code)
            })
        }
        Err(evcxr::Error::SubprocessTerminated(message)) => {
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

/// `src/lib.rs:LINE:COL` of the generated source -> `cell line N` when that line of generated
/// code is one of the cell's own lines (it usually is: user lines are copied verbatim).
pub(super) fn cell_location(location: &str, generated: &str, cell: &str) -> String {
    let mut parts = location.rsplitn(3, ':');
    let (Some(_col), Some(line), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
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
    let text = text.trim();
    match cell
        .lines()
        .position(|l| !text.is_empty() && l.trim() == text)
    {
        Some(i) => format!("cell line {}", i + 1),
        None => "code rustloop generated for this cell".to_owned(),
    }
}

/// The verdict on a cell that compiled and ran (or started to).
pub(super) fn judge_run(state: &CellState, label: &str) -> Option<ErrorInfo> {
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

pub(super) fn interrupted_while_compiling() -> ErrorInfo {
    ErrorInfo::new(
        "KeyboardInterrupt",
        "interrupted while compiling; the cell did not run and all variables are kept",
    )
}

/// The evaluation process ended during the cell. `restarted`: evcxr has already started a new
/// one (else one is starting, as after a fast-lane cell).
pub(super) fn evaluator_died(
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
    let detail = message.trim().lines().last().unwrap_or("").to_owned();
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

/// Answers evcxr's own input protocol (`evcxr_input::get_string`).
fn evcxr_input(router: &Router, prompt: String, password: bool) -> String {
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
    router: &Router,
    context: &mut CommandContext,
    execute: &Execute,
) -> Map<String, Value> {
    let mut results = Map::new();
    for (name, expression) in &execute.user_expressions {
        let prepared = cell::prepare(expression);
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

fn complete(context: &mut CommandContext, code: &str, cursor: usize) -> Completions {
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

fn inspect(context: &mut CommandContext, code: &str, cursor: usize) -> Inspection {
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

/// Kills the build processes (cargo, rustc) evcxr started from this process, leaving the
/// evaluation process alone.
fn kill_build_processes(evaluation_pid: Option<u32>) {
    fn children(pid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return out;
        };
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
        out
    }
    let mut stack = children(std::process::id());
    let mut victims = Vec::new();
    while let Some(pid) = stack.pop() {
        if Some(pid) == evaluation_pid {
            continue;
        }
        victims.push(pid);
        stack.extend(children(pid));
    }
    for pid in victims {
        // SAFETY: sending a signal to a process we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
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
