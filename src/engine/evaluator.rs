//! The evaluator thread: evcxr's `CommandContext` lives here, is warmed up in the background
//! (the kernel answers `kernel_info` meanwhile), and runs one request at a time. [`Engine`] is
//! the handle the kernel layer holds; its interrupt and input methods work while a cell runs.

use super::analysis::{Known, complete, identifier_end, inspect};
use super::cache::{self, Slot};
use super::cell;
use super::errors::ErrorInfo;
use super::fast_lane::FastLane;
use super::link::Link;
use super::outcome::INTERRUPT_GRACE;
use super::router::{InputWaiter, Router};
use super::run::{CellRun, run_cell, settle_variables};
use super::store::Variables;
use super::warm_up::warm_up;
use super::{Completions, Event, EventSink, Execute, Inspection, Outcome, Output};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

enum Request {
    Execute(Execute),
    Complete {
        code: String,
        cursor: usize,
        /// Requests are numbered (with inspections): one nobody waits for any more is still
        /// served, so rust-analyzer learns the path, unless a newer one is queued.
        seq: u64,
        reply: oneshot::Sender<Completions>,
    },
    Inspect {
        code: String,
        cursor: usize,
        seq: u64,
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
    /// The cache slot (its target directory shows how far a first build is).
    slot_dir: std::path::PathBuf,
    warnings_file: std::path::PathBuf,
    link: Arc<Link>,
    fast_lane: FastLane,
    variables: Mutex<Variables>,
    /// What completion offers while rust-analyzer is loading or the evaluator is busy.
    known: Mutex<Known>,
    /// Number of the latest completion or inspection request.
    analysis_seq: std::sync::atomic::AtomicU64,
}

/// How long a completion or inspection waits for rust-analyzer before the kernel answers
/// with what it knows (JupyterLab gives up after 1 s; the aim is a reply within 0.25 s).
const ANALYSIS_WAIT: Duration = Duration::from_millis(180);

impl Inner {
    /// How the evaluation process ended, once it has (waits up to a second for it).
    fn exit_status(&self) -> Option<String> {
        let child = self.child.lock().unwrap().clone()?;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if let Ok(Some(status)) = child.lock().unwrap().try_wait() {
                return Some(status.to_string());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn cell_run(&self) -> CellRun<'_> {
        CellRun {
            router: &self.router,
            warnings_file: &self.warnings_file,
            variables: &self.variables,
        }
    }
}

impl Engine {
    /// Starts the engine: binds the link, then warms evcxr up on the evaluator thread. Must be
    /// called inside the kernel's tokio runtime.
    pub fn start(sink: EventSink, slot: Slot) -> Result<Engine> {
        let warnings_file = slot.dir.join(".rustloop-warnings.jsonl");
        // Type definitions of an earlier session in this slot mean nothing now.
        let _ = std::fs::remove_file(super::store::types_file(&warnings_file));
        super::store::clear_jobs(&warnings_file);
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
            slot_dir: slot.dir.clone(),
            fast_lane: FastLane::new(&slot, warnings_file.clone()),
            warnings_file,
            link: link.clone(),
            variables: Mutex::new(Variables::default()),
            known: Mutex::new(Known::load(slot.dir.join(cache::COMPLETIONS_FILE))),
            analysis_seq: Default::default(),
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
            let (emit, done) = (self.inner.clone(), self.inner.clone());
            super::first_build::show(
                self.inner.slot_dir.clone(),
                move |output| emit.router.emit(output),
                move || done.warm.load(Ordering::SeqCst),
            );
        }
        if !self.inner.warm.load(Ordering::SeqCst)
            && self.inner.fast_lane.is_open()
            && request.user_expressions.is_empty()
            && cell::fast_lane_eligible(&cell::prepare(&request.code))
        {
            let inner = self.inner.clone();
            let fallback = request.clone();
            let spawned = std::thread::Builder::new()
                .name("rustloop-fast-lane".into())
                .spawn(move || {
                    let id = request.id;
                    let prepared = cell::prepare(&request.code);
                    let plan = inner
                        .cell_run()
                        .plan(&prepared, &Default::default(), true)
                        .or_else(|| Variables::definitions_only(&prepared));
                    let lost = inner.variables.lock().unwrap().names();
                    let exit_status = || inner.exit_status();
                    let ran = plan.as_ref().and_then(|plan| {
                        inner.fast_lane.run(
                            &inner.router,
                            &inner.link,
                            &request,
                            plan,
                            &cell::lane_deps(&prepared).unwrap_or_default(),
                            &lost,
                            &exit_status,
                        )
                    });
                    match (ran, plan) {
                        (Some((outcome, state)), Some(plan)) => {
                            let failed = outcome.error.as_ref().map(|_| &state);
                            if let Some(line) =
                                settle_variables(&inner.cell_run(), &plan, &request.label, failed)
                            {
                                inner.router.emit(Output::Stream {
                                    stderr: false,
                                    text: line,
                                });
                            }
                            inner.router.flush_carry();
                            (inner.router.sink())(Event::Finished { id, outcome });
                        }
                        _ => {
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

    /// Completions from rust-analyzer if it answers within [`ANALYSIS_WAIT`], else from what
    /// the kernel knows (it may be loading, or the evaluator busy with a cell).
    pub async fn complete(&self, code: String, cursor: usize) -> Completions {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Complete {
            code: code.clone(),
            cursor,
            seq: self.inner.analysis_seq.fetch_add(1, Ordering::SeqCst) + 1,
            reply,
        });
        match tokio::time::timeout(ANALYSIS_WAIT, rx).await {
            Ok(Ok(completions)) => completions,
            _ => {
                tracing::debug!("completion from what is known (analysis not ready)");
                self.inner.known.lock().unwrap().complete(&code, cursor)
            }
        }
    }

    /// Documentation from rust-analyzer if it answers within [`ANALYSIS_WAIT`], else what it
    /// showed for the same path before, if anything.
    pub async fn inspect(&self, code: String, cursor: usize) -> Inspection {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Inspect {
            code: code.clone(),
            cursor,
            seq: self.inner.analysis_seq.fetch_add(1, Ordering::SeqCst) + 1,
            reply,
        });
        match tokio::time::timeout(ANALYSIS_WAIT, rx).await {
            Ok(Ok(inspection)) => inspection,
            _ => identifier_end(&code, cursor)
                .and_then(|end| self.inner.known.lock().unwrap().docs(&code, end)),
        }
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
                super::wrapper::kill_builds(child_pid);
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

    /// A comm message from the front end (handled at once, even while a cell runs).
    pub fn comm(&self, message: super::comms::ClientComm) {
        self.inner.router.comm_from_client(message);
    }

    /// The open comms as `(comm_id, target_name)`, only those of `target` if given.
    pub fn open_comms(&self, target: Option<&str>) -> Vec<(String, String)> {
        self.inner.router.comms.list(target)
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
    let mut warmed = warm_up(
        &slot,
        &link,
        &inner.router,
        &inner.warnings_file,
        &inner.child,
    );
    // Cells that ran meanwhile on the fast lane: wait for one in flight, then evcxr takes over.
    let definitions = inner.fast_lane.close();
    if inner.fast_lane.child_died() {
        // A fast-lane cell crashed the evaluation process under evcxr: start evcxr afresh.
        tracing::info!("the evaluation process died during the warm-up; starting evcxr again");
        drop(warmed);
        warmed = warm_up(
            &slot,
            &link,
            &inner.router,
            &inner.warnings_file,
            &inner.child,
        );
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
                    "rustloop: definitions made while the kernel was starting could not be \
                     carried over; run those cells again if later cells need them ({e})\n"
                ),
            });
        }
    }
    let pending = requests.try_recv().ok();
    let startup_error = "the Rust evaluator could not start (see the kernel log or the first \
                         cell's output); check that `cargo` and `rustc` work in this environment";
    // A request whose asker stopped waiting is skipped only when a newer one is queued.
    let superseded =
        |seq: u64, closed: bool| closed && seq < inner.analysis_seq.load(Ordering::SeqCst);
    for request in pending.into_iter().chain(requests.iter()) {
        match request {
            Request::Execute(execute) => {
                let id = execute.id;
                let code = execute.code.clone();
                let outcome = match context.as_mut() {
                    Some(context) => run_cell(&inner.cell_run(), context, execute),
                    None => Outcome {
                        error: Some(ErrorInfo::new("EvaluatorUnavailable", startup_error)),
                        ..Outcome::default()
                    },
                };
                if outcome.error.is_none() {
                    inner.known.lock().unwrap().learn_cell(&code);
                }
                inner.router.flush_carry();
                (inner.router.sink())(Event::Finished { id, outcome });
            }
            Request::Complete {
                code,
                cursor,
                seq,
                reply,
            } => {
                if superseded(seq, reply.is_closed()) {
                    continue;
                }
                let result = context
                    .as_mut()
                    .map(|c| complete(c, &inner.known, &code, cursor))
                    .unwrap_or_default();
                let _ = reply.send(result);
            }
            Request::Inspect {
                code,
                cursor,
                seq,
                reply,
            } => {
                if superseded(seq, reply.is_closed()) {
                    continue;
                }
                let result = context
                    .as_mut()
                    .and_then(|c| inspect(c, &inner.known, &code, cursor));
                let _ = reply.send(result);
            }
        }
    }
}
