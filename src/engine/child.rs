//! The evaluation process: the same binary, started by evcxr, that loads each compiled cell and
//! runs it on its main thread.
//!
//! It speaks evcxr's protocol (`LOAD_AND_RUN <so> <fn>` on stdin, `EVCXR_*` lines on stdout) so
//! evcxr drives it unchanged, but unlike evcxr's own loop it keeps the notebook's output away
//! from that protocol pipe: fd 1 and fd 2 become pipes read by an output pump thread, which
//! forwards text and runtime messages to the kernel over the link socket *as they happen* (so a
//! background task's `println!` reaches the notebook between cells) and passes only the
//! protocol lines on to evcxr. Before telling evcxr a cell finished, the pump makes sure the
//! kernel has received everything the cell printed.

use super::link::{Frame, HELLO_DATA, HELLO_FAST, MARKER, write_frame};
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const EXECUTION_COMPLETE: &[u8] = b"EVCXR_EXECUTION_COMPLETE";
const PANIC_NOTIFICATION: &[u8] = b"EVCXR_PANIC_NOTIFICATION";
const ERROR_OCCURRED: &[u8] = b"EVCXR_ERROR_OCCURRED";
const VARIABLE_CHANGED: &[u8] = b"EVCXR_VARIABLE_CHANGED_TYPE:";
const INPUT_REQUEST: &[u8] = b"EVCXR_INPUT_REQUEST";
const BEGIN_CONTENT: &[u8] = b"EVCXR_BEGIN_CONTENT ";
const END_CONTENT: &[u8] = b"\nEVCXR_END_CONTENT\n";
const EVCXR: &[u8] = b"EVCXR_";

/// Environment variable naming the kernel's link socket.
pub const LINK_ENV: &str = "RUSTLOOP_LINK";
/// Environment variable naming the runtime library cells link against.
pub const RUNTIME_LIBRARY_ENV: &str = "RUSTLOOP_RUNTIME_LIBRARY";
/// Exit status when the runtime library was rebuilt under a running evaluation process.
pub const EXIT_RUNTIME_CHANGED: i32 = 75;

/// Incremented by the pump each time it has forwarded a flush request (see `flush_and_wait`).
static FLUSHED: AtomicU64 = AtomicU64::new(0);
static FLUSH_REQUESTS: AtomicU64 = AtomicU64::new(0);

/// If this process was started by evcxr as its evaluation child, runs it and never returns.
pub fn run_if_evaluation_process() {
    if std::env::var_os("EVCXR_IS_RUNTIME").is_none() {
        return;
    }
    let Some(link) = std::env::var_os(LINK_ENV) else {
        // Started by plain evcxr: behave exactly like evcxr's own child.
        evcxr::runtime_hook();
        return;
    };
    match main_loop(std::path::Path::new(&link)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("rustloop evaluation process: {e}");
            std::process::exit(99);
        }
    }
}

fn main_loop(link: &std::path::Path) -> std::io::Result<()> {
    let mut data = UnixStream::connect(link)?;
    data.write_all(format!("{HELLO_DATA}{}\n", std::process::id()).as_bytes())?;

    // Keep evcxr's pipes for the protocol, then point fd 1 and fd 2 at our own pipes.
    let proto_out = dup_cloexec(1)?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    dup2(out_write.as_raw_fd(), 1)?;
    dup2(err_write.as_raw_fd(), 2)?;
    drop((out_write, err_write));

    let pump = Pump {
        data,
        proto_out: std::fs::File::from(proto_out),
        out: std::fs::File::from(out_read),
        err: std::fs::File::from(err_read),
        pending: Vec::new(),
        at_line_start: true,
    };
    std::thread::Builder::new()
        .name("rustloop-output".into())
        .spawn(move || pump.run())?;
    install_crash_handlers();

    // Cells compiled by the kernel's fast lane (while evcxr warms up) arrive on their own
    // connection; evcxr's commands arrive on stdin. Both run here, one at a time.
    let mut fast = UnixStream::connect(link).ok().and_then(|mut stream| {
        stream
            .write_all(format!("{HELLO_FAST}{}\n", std::process::id()).as_bytes())
            .ok()?;
        Some(std::io::BufReader::new(stream))
    });

    // The runtime crate's hooks are looked up in each cell's library (its dependencies are
    // searched too), so this loop works before and after the runtime is first loaded.
    let mut cells = Cells {
        libraries: Vec::new(),
        store: std::ptr::null_mut(),
        run: 0,
        runtime_library: std::env::var_os(RUNTIME_LIBRARY_ENV).map(std::path::PathBuf::from),
        loaded_runtime: None,
    };
    let stdin = std::io::stdin();
    loop {
        match next_command(&mut fast)? {
            Command::Eof => break,
            Command::Fast(path) => {
                let outcome = match cells.run(&path, CellKind::Fast) {
                    Ok(panicked) => format!("\"panicked\":{panicked}"),
                    Err(e) => format!("\"error\":{}", serde_json::Value::from(e.to_string())),
                };
                // After everything the cell printed to fd 1; the pump collects fd 2 first.
                raw_frame(&format!("{{\"t\":\"fast_end\",{outcome}}}"));
            }
            Command::Evcxr => {
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    break;
                }
                let line = line.trim_end_matches('\n');
                let mut parts = line.splitn(3, ' ');
                let (Some("LOAD_AND_RUN"), Some(path), Some(function)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(std::io::Error::other(format!(
                        "unrecognised command {line:?}"
                    )));
                };
                cells.run(path, CellKind::Evcxr(function))?;
                // Printed through our own stdout pipe, so the pump sees it after all the
                // cell's output.
                raw_write(1, b"EVCXR_EXECUTION_COMPLETE\n");
            }
        }
    }
    for library in cells.libraries {
        std::mem::forget(library);
    }
    Ok(())
}

enum Command {
    /// A line is waiting on stdin (evcxr's `LOAD_AND_RUN`).
    Evcxr,
    /// A fast-lane cell: the library to load.
    Fast(String),
    Eof,
}

/// Waits until evcxr or the fast lane has something. stdin is only peeked at (poll), never
/// read ahead, because a cell may read it itself (evcxr's input protocol).
fn next_command(fast: &mut Option<std::io::BufReader<UnixStream>>) -> std::io::Result<Command> {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fast.as_ref().map_or(-1, |f| f.get_ref().as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll over valid descriptors (a negative fd is ignored).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0
            && let Some(reader) = fast.as_mut()
        {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => {
                    if let Some(path) = line.trim_end().strip_prefix("run ") {
                        return Ok(Command::Fast(path.to_owned()));
                    }
                }
                _ => *fast = None,
            }
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return Ok(Command::Evcxr);
        }
        if fds[0].revents != 0 {
            return Ok(Command::Eof);
        }
    }
}

enum CellKind<'a> {
    /// evcxr's cell function: takes and returns its variable store.
    Evcxr(&'a str),
    /// The fast lane's `rustloop_fast_cell`: returns whether the cell panicked.
    Fast,
}

/// The libraries loaded so far and evcxr's variable store.
struct Cells {
    libraries: Vec<libloading::Library>,
    store: *mut std::ffi::c_void,
    run: u64,
    runtime_library: Option<std::path::PathBuf>,
    loaded_runtime: Option<(u64, u64)>,
}

impl Cells {
    /// Loads and runs one cell; for a fast-lane cell, whether it panicked.
    fn run(&mut self, path: &str, kind: CellKind) -> std::io::Result<bool> {
        self.run += 1;
        let run = self.run;
        // A `:dep` that changes tokio's (or another shared crate's) version or features makes
        // cargo rebuild the runtime library as a new file. This process still has the old one
        // mapped, and a cell built against the new one would run against stale code or fail
        // to load: stop here and let evcxr start a fresh process.
        if let Some(loaded) = self.loaded_runtime
            && file_identity(self.runtime_library.as_deref()) != Some(loaded)
        {
            raw_frame("{\"t\":\"runtime_changed\"}");
            flush_and_wait(&flush_frame("{\"t\":\"flush\",\"exit\":true}"));
            std::process::exit(EXIT_RUNTIME_CHANGED);
        }
        // SAFETY: this library was just compiled for us to load; we never unload it (TLS
        // destructors may point into it).
        let library = unsafe { libloading::Library::new(path) }
            .map_err(|e| std::io::Error::other(format!("loading {path}: {e:?}")))?;
        type CellFn = extern "C" fn(*mut std::ffi::c_void) -> *mut std::ffi::c_void;
        type FastFn = extern "C" fn() -> i32;
        type HookFn = extern "C" fn(u64);
        let mut panicked = false;
        unsafe {
            let begin: Option<libloading::Symbol<HookFn>> =
                library.get(b"rustloop_runtime_cell_begin").ok();
            let end: Option<libloading::Symbol<HookFn>> =
                library.get(b"rustloop_runtime_cell_end").ok();
            enum Entry<'l> {
                Evcxr(libloading::Symbol<'l, CellFn>),
                Fast(libloading::Symbol<'l, FastFn>),
            }
            let entry = match kind {
                CellKind::Evcxr(function) => library.get(function.as_bytes()).map(Entry::Evcxr),
                CellKind::Fast => library.get(b"rustloop_fast_cell").map(Entry::Fast),
            }
            .map_err(std::io::Error::other)?;
            let fast = matches!(entry, Entry::Fast(_));
            raw_frame(&format!(
                "{{\"t\":\"cell_start\",\"run\":{run},\"fast\":{fast}}}"
            ));
            if let Some(begin) = &begin {
                begin(run);
            }
            match entry {
                Entry::Evcxr(cell) => self.store = cell(self.store),
                Entry::Fast(cell) => panicked = cell() != 0,
            }
            if let Some(end) = &end {
                end(run);
            }
            if begin.is_some() && self.loaded_runtime.is_none() {
                // The runtime library is mapped now; remember which file it was.
                self.loaded_runtime = file_identity(self.runtime_library.as_deref());
            }
        }
        self.libraries.push(library);
        Ok(panicked)
    }
}

fn file_identity(path: Option<&std::path::Path>) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path?).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Writes a runtime-style frame straight to fd 1 with a single `write` (atomic for a pipe).
fn raw_frame(json: &str) {
    let mut frame = Vec::with_capacity(json.len() + 16);
    frame.extend_from_slice(MARKER);
    frame.extend_from_slice(json.len().to_string().as_bytes());
    frame.push(b'\n');
    frame.extend_from_slice(json.as_bytes());
    frame.push(b'\n');
    raw_write(1, &frame);
}

fn raw_write(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: plain write(2) of a valid buffer.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Moves the evaluation process's output to the kernel.
struct Pump {
    data: UnixStream,
    proto_out: std::fs::File,
    out: std::fs::File,
    err: std::fs::File,
    /// Bytes from fd 1 not yet classified (a marker or protocol line may be incomplete).
    pending: Vec<u8>,
    /// Whether the last text forwarded ended a line (protocol lines start lines).
    at_line_start: bool,
}

impl Pump {
    fn run(mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.out.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.err.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: poll over two valid descriptors.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if ready < 0 {
                continue;
            }
            if fds[1].revents != 0 && !self.forward_stderr(&mut buf) && fds[0].revents == 0 {
                return;
            }
            if fds[0].revents != 0 {
                match self.out.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        self.pending.extend_from_slice(&buf[..n]);
                        if self.process_stdout().is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Forwards what stderr holds; false at end of file.
    fn forward_stderr(&mut self, buf: &mut [u8]) -> bool {
        match self.err.read(buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                let _ = write_frame(&mut self.data, Frame::Stderr, &buf[..n]);
                true
            }
        }
    }

    /// Reads whatever stderr holds right now without blocking, so that a cell's stderr is
    /// forwarded before the cell is reported complete.
    fn drain_stderr(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let mut fd = libc::pollfd {
                fd: self.err.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll over one valid descriptor with a zero timeout.
            let ready = unsafe { libc::poll(&mut fd, 1, 0) };
            if ready <= 0 || !self.forward_stderr(&mut buf) {
                return;
            }
        }
    }

    fn process_stdout(&mut self) -> std::io::Result<()> {
        loop {
            let marker = find(&self.pending, MARKER);
            let evcxr = find(&self.pending, EVCXR);
            let next = match (marker, evcxr) {
                (Some(m), Some(e)) => Some(m.min(e)),
                (m, e) => m.or(e),
            };
            let Some(at) = next else {
                // Plain text; keep back a tail that could be the start of a marker.
                let keep = partial_suffix(&self.pending, self.at_line_start);
                let text: Vec<u8> = self.pending.drain(..self.pending.len() - keep).collect();
                if !text.is_empty() {
                    self.at_line_start = text.ends_with(b"\n");
                    write_frame(&mut self.data, Frame::Stdout, &text)?;
                }
                return Ok(());
            };
            if at > 0 {
                let text: Vec<u8> = self.pending.drain(..at).collect();
                self.at_line_start = text.ends_with(b"\n");
                write_frame(&mut self.data, Frame::Stdout, &text)?;
            }
            let consumed = if self.pending.starts_with(MARKER) {
                self.take_runtime_frame()?
            } else {
                self.take_protocol_line()?
            };
            if !consumed {
                return Ok(()); // incomplete: wait for more bytes
            }
        }
    }

    /// `\0RLP\0<len>\n<json>\n` -> a Runtime frame. Returns false if incomplete.
    fn take_runtime_frame(&mut self) -> std::io::Result<bool> {
        let header_end = match self.pending[MARKER.len()..]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(i) => MARKER.len() + i,
            // A length has at most 20 digits: anything longer is text that looks like a marker.
            None if self.pending.len() > MARKER.len() + 24 => MARKER.len(),
            None => return Ok(false),
        };
        // A frame over the limit is not one of ours either (the runtime never sends one).
        let len: Option<usize> = std::str::from_utf8(&self.pending[MARKER.len()..header_end])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&len| len <= crate::limits::get().frame);
        let Some(len) = len else {
            // Not one of ours after all: pass the bytes through as text.
            let text: Vec<u8> = self.pending.drain(..header_end).collect();
            write_frame(&mut self.data, Frame::Stdout, &text)?;
            return Ok(true);
        };
        let total = header_end + 1 + len + 1;
        if self.pending.len() < total {
            return Ok(false);
        }
        let body: Vec<u8> = self.pending[header_end + 1..header_end + 1 + len].to_vec();
        self.pending.drain(..total);
        if body.starts_with(b"{\"t\":\"fast_end\"") {
            // A fast-lane cell ended: what it wrote to fd 2 goes first.
            self.drain_stderr();
        }
        if body.starts_with(b"{\"t\":\"flush\"") {
            // A crash handler or exit hook wants everything forwarded before the process dies.
            self.drain_stderr();
            write_frame(&mut self.data, Frame::Runtime, &body)?;
            FLUSHED.fetch_add(1, Ordering::SeqCst);
            return Ok(true);
        }
        write_frame(&mut self.data, Frame::Runtime, &body)?;
        Ok(true)
    }

    /// A line starting with `EVCXR_`. Returns false if incomplete.
    fn take_protocol_line(&mut self) -> std::io::Result<bool> {
        if self.pending.starts_with(BEGIN_CONTENT) {
            let Some(end) = find(&self.pending, END_CONTENT) else {
                return Ok(false);
            };
            let block: Vec<u8> = self.pending.drain(..end + END_CONTENT.len()).collect();
            let header_end = block
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(block.len());
            let mime = String::from_utf8_lossy(&block[BEGIN_CONTENT.len()..header_end]);
            let data = String::from_utf8_lossy(&block[(header_end + 1).min(end)..end]);
            let json = serde_json::json!({"t": "content", "mime": mime.trim(), "data": data});
            write_frame(&mut self.data, Frame::Runtime, json.to_string().as_bytes())?;
            return Ok(true);
        }
        let Some(newline) = self.pending.iter().position(|&b| b == b'\n') else {
            if self.pending.len() > 64 * 1024 {
                // Not a protocol line; don't hold user output back.
                let text = std::mem::take(&mut self.pending);
                write_frame(&mut self.data, Frame::Stdout, &text)?;
                return Ok(true);
            }
            return Ok(false);
        };
        let line: Vec<u8> = self.pending.drain(..=newline).collect();
        self.at_line_start = true;
        let body = &line[..line.len() - 1];
        if body == EXECUTION_COMPLETE {
            // Everything the cell wrote to fd 1 is forwarded; collect fd 2 too, tell the kernel
            // and wait until it has taken it all, and only then let evcxr return.
            self.drain_stderr();
            write_frame(&mut self.data, Frame::CellEnd, b"")?;
            self.wait_for_ack();
            self.proto_out.write_all(&line)?;
        } else if body == PANIC_NOTIFICATION || body == ERROR_OCCURRED {
            let kind = if body == PANIC_NOTIFICATION {
                "evcxr_panic"
            } else {
                "question_mark_error"
            };
            write_frame(
                &mut self.data,
                Frame::Runtime,
                format!("{{\"t\":\"{kind}\"}}").as_bytes(),
            )?;
            self.proto_out.write_all(&line)?;
        } else if body.starts_with(VARIABLE_CHANGED) || body.starts_with(INPUT_REQUEST) {
            self.proto_out.write_all(&line)?;
        } else {
            write_frame(&mut self.data, Frame::Stdout, &line)?;
        }
        self.proto_out.flush()?;
        Ok(true)
    }

    fn wait_for_ack(&mut self) {
        let _ = self.data.set_read_timeout(Some(Duration::from_secs(5)));
        let mut ack = [0u8; 1];
        let _ = self.data.read_exact(&mut ack);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Length of the longest suffix of `bytes` that may be the start of a marker and so must wait
/// for more input. `EVCXR_` protocol lines start lines, so a partial one is only held back at
/// the start of a line; text like `print!("E")` is not delayed.
fn partial_suffix(bytes: &[u8], at_line_start: bool) -> usize {
    let mut keep = 0;
    for needle in [MARKER, EVCXR] {
        for len in (1..needle.len()).rev() {
            if len > bytes.len() || !bytes.ends_with(&needle[..len]) {
                continue;
            }
            let starts_line = match bytes.len() - len {
                0 => at_line_start,
                i => bytes[i - 1] == b'\n',
            };
            if needle == MARKER || starts_line {
                keep = keep.max(len);
            }
            break;
        }
    }
    keep
}

fn dup_cloexec(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new descriptor we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn dup2(from: RawFd, to: RawFd) -> std::io::Result<()> {
    // SAFETY: dup2 onto a standard descriptor (clears CLOEXEC on the target).
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Asks the pump to forward everything written so far and waits (bounded) until it has. Only
/// async-signal-safe calls, so crash handlers may use it.
fn flush_and_wait(frame: &[u8]) {
    let target = FLUSH_REQUESTS.fetch_add(1, Ordering::SeqCst) + 1;
    raw_write(1, frame);
    let start = Instant::now();
    while FLUSHED.load(Ordering::SeqCst) < target && start.elapsed() < Duration::from_millis(500) {
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 2_000_000,
        };
        // SAFETY: nanosleep is async-signal-safe.
        unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
    }
}

struct CrashFrames {
    signals: Vec<(libc::c_int, Vec<u8>)>,
}

static CRASH_FRAMES: std::sync::OnceLock<CrashFrames> = std::sync::OnceLock::new();

fn flush_frame(json: &str) -> Vec<u8> {
    let mut frame = MARKER.to_vec();
    frame.extend_from_slice(format!("{}\n{json}\n", json.len()).as_bytes());
    frame
}

extern "C" fn on_fatal_signal(signal: libc::c_int) {
    if let Some(frames) = CRASH_FRAMES.get()
        && let Some((_, frame)) = frames.signals.iter().find(|(s, _)| *s == signal)
    {
        flush_and_wait(frame);
    }
    // SAFETY: restore the default action and re-raise, so the process dies of this signal.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

unsafe extern "C" {
    /// glibc's `atexit` that also gets the exit status.
    fn on_exit(
        function: extern "C" fn(libc::c_int, *mut libc::c_void),
        arg: *mut libc::c_void,
    ) -> libc::c_int;
}

/// At `exit` (e.g. `std::process::exit` in a cell): flush what the process printed, and say
/// with which status it is leaving.
extern "C" fn flush_at_exit(status: libc::c_int, _: *mut libc::c_void) {
    flush_and_wait(&flush_frame(&format!(
        "{{\"t\":\"flush\",\"exit\":{status}}}"
    )));
}

fn install_crash_handlers() {
    let names = [
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGABRT, "SIGABRT"),
    ];
    let frames = CrashFrames {
        signals: names
            .iter()
            .map(|(sig, name)| {
                (
                    *sig,
                    flush_frame(&format!("{{\"t\":\"flush\",\"signal\":\"{name}\"}}")),
                )
            })
            .collect(),
    };
    let _ = CRASH_FRAMES.set(frames);
    for (signal, _) in names {
        // SAFETY: installing a handler that only uses async-signal-safe calls; SA_ONSTACK so
        // a stack overflow can still be reported on the alternate stack.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as *const () as usize;
            action.sa_flags = libc::SA_ONSTACK | libc::SA_NODEFER | libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    // SAFETY: registering a plain extern "C" function.
    unsafe { on_exit(flush_at_exit, std::ptr::null_mut()) };
    // A group SIGINT meant for the kernel must not kill the evaluator; interrupts arrive as
    // messages on the link.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_markers_are_held_back() {
        assert_eq!(partial_suffix(b"hello", true), 0);
        assert_eq!(partial_suffix(b"hello\0RL", false), 3);
        assert_eq!(partial_suffix(b"abc\nEVCX", false), 4);
        assert_eq!(partial_suffix(b"E", true), 1);
        // Mid-line text that happens to end like a marker is not held back.
        assert_eq!(partial_suffix(b"abc EVCX", true), 0);
        assert_eq!(partial_suffix(b"E", false), 0);
    }
}
