//! Interprets what arrives on the link: output becomes [`Output`] events, and what the
//! evaluator needs to judge a cell (a panic, an interrupt, a crash, the final value) is kept in
//! [`CellState`] until the cell ends.

use super::comms::{ClientAction, ClientComm, CommRegistry};
use super::link::{Link, LinkEvent};
use super::{EventSink, ExecId, Output};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

mod state;

pub use state::{CellState, FastEnd, InputWaiter, PanicReport};

pub struct Router {
    sink: EventSink,
    /// While evcxr warms up, the values its probe cells display are not shown to anyone.
    pub warming: std::sync::atomic::AtomicBool,
    /// Whether the run that started last is a fast-lane cell (else one of evcxr's).
    last_run_fast: std::sync::atomic::AtomicBool,
    /// Who waits for the fast-lane cell in flight.
    pub fast_waiter: Mutex<Option<std::sync::mpsc::Sender<FastEnd>>>,
    rt: tokio::runtime::Handle,
    pub state: Mutex<CellState>,
    /// Cell label and request per evaluation-process run: where a task's output goes, and how
    /// messages about background tasks name its cell.
    runs: Mutex<HashMap<u64, (String, ExecId)>>,
    /// The run that started last.
    last_run: Mutex<Option<u64>>,
    link: OnceLock<Arc<Link>>,
    /// Where the rustc wrapper leaves the warnings of the cell being compiled.
    warnings_file: std::path::PathBuf,
    tasks_reply: Mutex<Option<std::sync::mpsc::Sender<Value>>>,
    carry: Mutex<[Vec<u8>; 2]>,
    /// Control lines, written in order by one task once the link is set.
    commands: tokio::sync::mpsc::UnboundedSender<String>,
    pending_commands: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    pub comms: CommRegistry,
}

impl Router {
    /// Must be called inside the kernel's tokio runtime.
    pub fn new(sink: EventSink, warnings_file: std::path::PathBuf) -> Arc<Router> {
        let (commands, pending) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Router {
            sink,
            warming: std::sync::atomic::AtomicBool::new(true),
            fast_waiter: Mutex::new(None),
            last_run_fast: std::sync::atomic::AtomicBool::new(false),
            rt: tokio::runtime::Handle::current(),
            state: Mutex::new(CellState::default()),
            runs: Mutex::new(HashMap::new()),
            last_run: Mutex::new(None),
            link: OnceLock::new(),
            warnings_file,
            tasks_reply: Mutex::new(None),
            carry: Mutex::new([Vec::new(), Vec::new()]),
            commands,
            pending_commands: Mutex::new(Some(pending)),
            comms: CommRegistry::default(),
        })
    }

    pub fn set_link(&self, link: Arc<Link>) {
        let _ = self.link.set(link.clone());
        if let Some(mut lines) = self.pending_commands.lock().unwrap().take() {
            self.rt.spawn(async move {
                while let Some(line) = lines.recv().await {
                    link.command(line).await;
                }
            });
        }
    }

    pub fn sink(&self) -> &EventSink {
        &self.sink
    }

    pub fn emit(&self, output: Output) {
        (self.sink)(super::Event::Output(output));
    }

    /// Sends a line to the runtime's control connection (from any thread). Lines are written
    /// in the order of these calls (comm messages depend on it).
    pub fn command(&self, line: String) {
        let _ = self.commands.send(line);
    }

    /// A comm message from the front end: to the runtime, or answered here if it cannot go.
    pub fn comm_from_client(&self, message: ClientComm) {
        let connected = self.link.get().is_some_and(|l| l.control_connected());
        match self.comms.client_message(message, connected) {
            ClientAction::Forward(line) => self.command(line),
            ClientAction::Answer(output) => self.emit(output),
            ClientAction::Ignore => {}
        }
    }

    /// Sends the interrupt for `run` now.
    pub fn deliver_interrupt(&self, state: &mut CellState, run: u64) {
        state.interrupt_delivered_at = Some(Instant::now());
        self.command(format!("interrupt {run}"));
    }

    /// Asks the runtime for its live tasks (answered through [`Router::handle`]).
    pub fn request_tasks(&self) -> std::sync::mpsc::Receiver<Value> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self.tasks_reply.lock().unwrap() = Some(tx);
        self.command("tasks".to_owned());
        rx
    }

    pub fn label_of_run(&self, run: u64) -> Option<String> {
        self.runs
            .lock()
            .unwrap()
            .get(&run)
            .map(|(label, _)| label.clone())
    }

    /// The earlier cell a runtime message tagged with `run` belongs to, if that is not the
    /// running cell.
    fn late_origin(&self, run: Option<u64>) -> Option<ExecId> {
        let run = run?;
        if self.state.lock().unwrap().run == Some(run) {
            return None;
        }
        self.runs.lock().unwrap().get(&run).map(|(_, id)| *id)
    }

    /// Where untagged stdout text goes: while a cell has been sent but has not started in the
    /// evaluation process, stdout text was written before its `cell_start` frame (both travel
    /// through the same pipe, in order), so it belongs to the run before. stderr has its own
    /// pipe, unordered with `cell_start`, and stays with the running cell.
    fn untagged_origin(&self, stderr: bool) -> Option<ExecId> {
        if stderr {
            return None;
        }
        {
            let state = self.state.lock().unwrap();
            if state.executing.is_none() || state.run.is_some() {
                return None;
            }
        }
        let last = (*self.last_run.lock().unwrap())?;
        self.runs.lock().unwrap().get(&last).map(|(_, id)| *id)
    }

    fn emit_from(&self, origin: Option<ExecId>, output: Output) {
        match origin {
            Some(origin) => (self.sink)(super::Event::Late { origin, output }),
            None => self.emit(output),
        }
    }

    /// Called once per link event, in order.
    pub fn handle(&self, event: LinkEvent) {
        match event {
            LinkEvent::Stdout(bytes) => self.stream(false, &bytes),
            LinkEvent::Stderr(bytes) => self.stream(true, &bytes),
            LinkEvent::Runtime(message) => {
                if message["t"] == "content"
                    && self.warming.load(std::sync::atomic::Ordering::SeqCst)
                    && !self.last_run_fast.load(std::sync::atomic::Ordering::SeqCst)
                {
                    // The value of evcxr's start-up probe (`42`).
                    tracing::debug!("during warm-up: {message}");
                    return;
                }
                self.runtime(message)
            }
            LinkEvent::Closed => {
                self.flush_carry();
                for close in self.comms.close_all() {
                    self.emit(close);
                }
                if let Some(waiter) = self.fast_waiter.lock().unwrap().take() {
                    let _ = waiter.send(FastEnd::Died);
                }
            }
        }
    }

    /// Emits text, holding back an incomplete UTF-8 sequence at the end of a chunk.
    fn stream(&self, stderr: bool, bytes: &[u8]) {
        let text = {
            let mut carry = self.carry.lock().unwrap();
            let buf = &mut carry[stderr as usize];
            buf.extend_from_slice(bytes);
            let valid = match std::str::from_utf8(buf) {
                Ok(_) => buf.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => buf.len(), // invalid bytes: pass through lossily
            };
            let rest = buf.split_off(valid);
            let text = String::from_utf8_lossy(buf).into_owned();
            *buf = rest;
            text
        };
        if !text.is_empty() {
            self.emit_from(
                self.untagged_origin(stderr),
                Output::Stream { stderr, text },
            );
        }
    }

    /// Emits whatever partial UTF-8 is left (end of a cell or of the process).
    pub fn flush_carry(&self) {
        let pending: Vec<(bool, Vec<u8>)> = {
            let mut carry = self.carry.lock().unwrap();
            [false, true]
                .into_iter()
                .map(|e| (e, std::mem::take(&mut carry[e as usize])))
                .collect()
        };
        for (stderr, bytes) in pending {
            if !bytes.is_empty() {
                self.emit(Output::Stream {
                    stderr,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                });
            }
        }
    }

    fn runtime(&self, message: Value) {
        let kind = message["t"].as_str().unwrap_or("");
        let object = |key: &str| message[key].as_object().cloned().unwrap_or_default();
        match kind {
            "cell_start" => {
                let run = message["run"].as_u64().unwrap_or(0);
                let fast = message["fast"].as_bool().unwrap_or(false);
                self.last_run_fast
                    .store(fast, std::sync::atomic::Ordering::SeqCst);
                let mut state = self.state.lock().unwrap();
                // While a fast-lane cell is current, evcxr's warm-up runs are not it.
                if state.executing.is_some() && state.fast_lane == fast {
                    state.run = Some(run);
                    if let Some(id) = state.executing {
                        let mut runs = self.runs.lock().unwrap();
                        // Bounded: a notebook's tasks rarely outlive thousands of cells.
                        if runs.len() >= 4096 {
                            runs.retain(|&r, _| r + 1024 > run);
                        }
                        runs.insert(run, (state.label.clone(), id));
                        *self.last_run.lock().unwrap() = Some(run);
                    }
                    self.command(format!("label {run} {}", hex::encode(&state.label)));
                    if state.interrupt_requested && state.interrupt_delivered_at.is_none() {
                        self.deliver_interrupt(&mut state, run);
                    }
                    // The cell compiled: its warnings come before anything it prints.
                    let warnings = super::warnings::render(&self.warnings_file, &state.code);
                    drop(state);
                    if !warnings.is_empty() {
                        self.emit(Output::Stream {
                            stderr: true,
                            text: warnings,
                        });
                    }
                }
            }
            "display" | "content" => {
                let (data, metadata) = if kind == "content" {
                    let mut data = Map::new();
                    let mime = message["mime"].as_str().unwrap_or("text/plain").to_owned();
                    data.insert(mime, message["data"].clone());
                    (data, Map::new())
                } else {
                    (object("data"), object("metadata"))
                };
                if let Some(origin) = self.late_origin(message["run"].as_u64()) {
                    let mut data = data;
                    ensure_plain(&mut data);
                    let display_id = message["id"].as_str().map(str::to_owned);
                    let output = Output::Display {
                        data,
                        metadata,
                        display_id,
                    };
                    return self.emit_from(Some(origin), output);
                }
                let mut state = self.state.lock().unwrap();
                if state.in_result {
                    let result = state.result.get_or_insert_with(Default::default);
                    result.0.extend(data);
                    result.1.extend(metadata);
                    return;
                }
                drop(state);
                let mut data = data;
                ensure_plain(&mut data);
                self.emit(Output::Display {
                    data,
                    metadata,
                    display_id: message["id"].as_str().map(str::to_owned),
                });
            }
            "update" => self.emit(Output::Update {
                data: object("data"),
                metadata: object("metadata"),
                display_id: message["id"].as_str().unwrap_or_default().to_owned(),
            }),
            "clear" => self.emit_from(
                self.late_origin(message["run"].as_u64()),
                Output::Clear {
                    wait: message["wait"].as_bool().unwrap_or(false),
                },
            ),
            "stream" => self.emit_from(
                self.late_origin(message["run"].as_u64()),
                Output::Stream {
                    stderr: false,
                    text: message["text"].as_str().unwrap_or_default().to_owned(),
                },
            ),
            "result_begin" => {
                let mut state = self.state.lock().unwrap();
                state.in_result = true;
                state.result = None;
            }
            "result_end" => {
                let result = {
                    let mut state = self.state.lock().unwrap();
                    state.in_result = false;
                    let result = state.result.take();
                    match (&mut state.capture, result) {
                        (Some(captured), Some((data, _))) => {
                            *captured = data;
                            None
                        }
                        (_, result) => result,
                    }
                };
                if let Some((mut data, metadata)) = result {
                    ensure_plain(&mut data);
                    self.emit(Output::Result { data, metadata });
                }
            }
            "input" => {
                let prompt = message["prompt"].as_str().unwrap_or("").to_owned();
                let password = message["password"].as_bool().unwrap_or(false);
                let mut state = self.state.lock().unwrap();
                let refusal = if state.executing.is_none() {
                    Some("input() can only be answered while a cell is running")
                } else if !state.allow_stdin {
                    Some(
                        "input() is not available: this client does not accept input \
                         (the execute request had allow_stdin: false, as in nbconvert)",
                    )
                } else if !matches!(state.input, InputWaiter::None) {
                    Some("another input request is already waiting for the user")
                } else {
                    None
                };
                match refusal {
                    Some(reason) => {
                        drop(state);
                        self.command(format!("input_err {}", hex::encode(reason)));
                    }
                    None => {
                        state.input = InputWaiter::Runtime;
                        drop(state);
                        self.emit(Output::InputRequest { prompt, password });
                    }
                }
            }
            "panic" => {
                let report = PanicReport {
                    message: message["message"].as_str().unwrap_or("").to_owned(),
                    location: message["location"].as_str().unwrap_or("").to_owned(),
                };
                if message["main"].as_bool() == Some(true) {
                    self.state.lock().unwrap().panic = Some(report);
                } else {
                    let thread = message["thread"].as_str().unwrap_or("?");
                    let task = message["task"]
                        .as_str()
                        .map(|t| format!("task {t}"))
                        .unwrap_or_else(|| "a thread".to_owned());
                    let origin = message["run"]
                        .as_u64()
                        .and_then(|run| self.label_of_run(run))
                        .map(|label| format!(" spawned by cell {label}"))
                        .unwrap_or_default();
                    let text = format!(
                        "thread '{thread}' panicked ({task}{origin}): {}\n\
                         The runtime keeps running; awaiting this task's JoinHandle gives \
                         Err(JoinError::Panic).\n",
                        report.message
                    );
                    let late = self.late_origin(message["run"].as_u64());
                    self.emit_from(late, Output::Stream { stderr: true, text });
                }
            }
            "fast_end" => {
                let result = match message["error"].as_str() {
                    Some(error) => Err(error.to_owned()),
                    None => {
                        if message["panicked"].as_bool() == Some(true) {
                            self.state.lock().unwrap().evcxr_panic = true;
                        }
                        Ok(())
                    }
                };
                if let Some(waiter) = self.fast_waiter.lock().unwrap().take() {
                    let _ = waiter.send(FastEnd::Ran(result));
                }
            }
            "comm" => {
                if let Some(output) = self.comms.runtime_message(&message) {
                    self.emit(output);
                }
            }
            "interrupted" => self.state.lock().unwrap().interrupted_at_await = true,
            "runtime_changed" => self.state.lock().unwrap().runtime_changed = true,
            "evcxr_panic" => self.state.lock().unwrap().evcxr_panic = true,
            "question_mark_error" => self.state.lock().unwrap().question_mark_error = true,
            "tasks" => {
                if let Some(reply) = self.tasks_reply.lock().unwrap().take() {
                    let _ = reply.send(message["tasks"].clone());
                }
            }
            "flush" => {
                if let Some(signal) = message["signal"].as_str() {
                    self.state.lock().unwrap().crash_signal = Some(signal.to_owned());
                }
                if let Some(status) = message["exit"].as_i64() {
                    self.state.lock().unwrap().exit_status = Some(status);
                }
            }
            other => tracing::debug!("unknown runtime message {other:?}"),
        }
    }
}

/// Every bundle carries `text/plain` (the spec's fallback for clients that show nothing
/// else); `evcxr_display` implementations often send only HTML.
fn ensure_plain(data: &mut Map<String, Value>) {
    if data.contains_key("text/plain") || data.is_empty() {
        return;
    }
    let kinds: Vec<&str> = data.keys().map(String::as_str).collect();
    let plain = format!("<{}>", kinds.join(", "));
    data.insert("text/plain".to_owned(), Value::String(plain));
}
