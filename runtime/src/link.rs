//! The link to the kernel: framed messages out (through stdout, in order with printed text) and
//! a control connection in (interrupts, input replies, task queries).
//!
//! Frame format on stdout: `\0RLP\0<decimal length>\n<JSON>\n`; the evaluation process's output
//! pump recognises the marker anywhere in the byte stream. Control lines from the kernel:
//! `interrupt <run>`, `input_ok <hex>`, `input_err <hex>`, `label <run> <hex>`, `tasks`,
//! `comm <json>` (a front end's comm message, see `comm`).
//!
//! Both directions respect the kernel's frame limit (`RUSTLOOP_MAX_FRAME_SIZE`, 256 MiB by
//! default): a message over it is not sent (the cell gets a line on stderr instead), and a
//! control line over it ends the control connection rather than growing without bound.

use crate::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

const MARKER: &[u8] = b"\0RLP\0";
const DEFAULT_LIMIT: usize = 256 * 1024 * 1024;

/// The largest frame the kernel accepts from this process.
pub(crate) fn frame_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("RUSTLOOP_MAX_FRAME_SIZE")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_LIMIT)
    })
}

/// Sends one framed JSON message (already encoded) to the kernel.
pub(crate) fn send(message: &str) {
    if message.len() > frame_limit() {
        eprintln!(
            "rustloop: a message of {} bytes was not sent: the kernel accepts at most {} \
             (see --max-message-size)",
            message.len(),
            frame_limit()
        );
        return;
    }
    let mut frame = Vec::with_capacity(message.len() + 24);
    frame.extend_from_slice(MARKER);
    frame.extend_from_slice(message.len().to_string().as_bytes());
    frame.push(b'\n');
    frame.extend_from_slice(message.as_bytes());
    frame.push(b'\n');
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = out.write_all(&frame);
    let _ = out.flush();
}

struct Control {
    interrupts: watch::Sender<u64>,
    /// The reply channel of the `input` call waiting for the user, if any.
    pending_input: Mutex<Option<mpsc::Sender<Result<String, String>>>>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

fn control() -> &'static Control {
    CONTROL.get_or_init(|| Control {
        interrupts: watch::channel(0).0,
        pending_input: Mutex::new(None),
    })
}

/// Watches the number of the last run the kernel asked to interrupt.
pub(crate) fn interrupts() -> watch::Receiver<u64> {
    control().interrupts.subscribe()
}

/// Connects the control channel and serves it on a thread. Without a kernel (the variable is
/// unset) there is simply nothing to serve.
pub(crate) fn start() {
    let _ = control();
    let Ok(path) = std::env::var("RUSTLOOP_LINK") else {
        return;
    };
    let Ok(mut stream) = UnixStream::connect(&path) else {
        return;
    };
    if stream
        .write_all(format!("C{}\n", std::process::id()).as_bytes())
        .is_err()
    {
        return;
    }
    std::thread::Builder::new()
        .name("rustloop-control".into())
        .spawn(move || serve(stream))
        .expect("spawn control thread");
}

/// The next `\n`-terminated line, at most `limit` bytes; None at the end, on an error or when
/// the line is longer.
fn read_line(reader: &mut impl BufRead, limit: usize) -> Option<String> {
    let mut line = Vec::new();
    let n = reader
        .by_ref()
        .take(limit as u64 + 1)
        .read_until(b'\n', &mut line)
        .ok()?;
    if n == 0 || !line.ends_with(b"\n") {
        return None;
    }
    line.pop();
    String::from_utf8(line).ok()
}

fn serve(stream: UnixStream) {
    let mut reader = BufReader::new(stream);
    while let Some(line) = read_line(&mut reader, frame_limit()) {
        let (command, argument) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        match command {
            "interrupt" => {
                if let Ok(run) = argument.parse() {
                    control().interrupts.send_replace(run);
                }
            }
            "input_ok" | "input_err" => {
                let text = json::unhex(argument).unwrap_or_default();
                let reply = if command == "input_ok" {
                    Ok(text)
                } else {
                    Err(text)
                };
                if let Some(waiter) = control().pending_input.lock().unwrap().take() {
                    let _ = waiter.send(reply);
                }
            }
            "label" => {
                if let Some((run, label)) = argument.split_once(' ')
                    && let (Ok(run), Some(label)) = (run.parse(), json::unhex(label))
                {
                    crate::tasks::set_label(run, label);
                }
            }
            "comm" => crate::comm::dispatch(argument),
            "tasks" => {
                let tasks: Vec<String> = crate::tasks::live().iter().map(|t| t.to_json()).collect();
                send(&json::object([
                    ("t", json::string("tasks")),
                    ("tasks", format!("[{}]", tasks.join(","))),
                ]));
            }
            _ => {}
        }
    }
}

/// Asks the kernel for a line of input and waits for the reply.
pub(crate) fn input(prompt: &str, password: bool) -> std::io::Result<String> {
    let (tx, rx) = mpsc::channel();
    {
        let mut pending = control().pending_input.lock().unwrap();
        if pending.is_some() {
            return Err(std::io::Error::other(
                "another input() call is already waiting for the user",
            ));
        }
        *pending = Some(tx);
    }
    send(&json::object([
        ("t", json::string("input")),
        ("prompt", json::string(prompt)),
        ("password", password.to_string()),
    ]));
    // The kernel always answers (with the text or with an error); an hour-long wait loop only
    // guards against a kernel that went away without closing the connection.
    let reply = loop {
        match rx.recv_timeout(Duration::from_secs(3600)) {
            Ok(reply) => break reply,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err("the kernel connection closed".to_owned());
            }
        }
    };
    control().pending_input.lock().unwrap().take();
    reply.map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_are_bounded() {
        let mut input: &[u8] = b"interrupt 3\ntasks\n";
        assert_eq!(read_line(&mut input, 64).as_deref(), Some("interrupt 3"));
        assert_eq!(read_line(&mut input, 64).as_deref(), Some("tasks"));
        assert_eq!(read_line(&mut input, 64), None);
        let long = format!("input_ok {}\nnext\n", "ab".repeat(100));
        assert_eq!(read_line(&mut long.as_bytes(), 64), None);
        let mut unterminated: &[u8] = b"interrupt";
        assert_eq!(read_line(&mut unterminated, 64), None);
    }
}
