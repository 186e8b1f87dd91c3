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

mod pump;

use super::link::{Frame, HELLO_DATA, HELLO_FAST, MARKER, write_frame};
use pump::Pump;
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
            // The runtime learns of the new run first: from then on, tasks of earlier cells
            // send their text tagged with their own run (see `runtime/src/origin.rs`), and
            // untagged text before `cell_start` still belongs to the previous run.
            if let Some(begin) = &begin {
                begin(run);
            }
            raw_frame(&format!(
                "{{\"t\":\"cell_start\",\"run\":{run},\"fast\":{fast}}}"
            ));
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
