//! The link between the kernel and its evaluation process: a Unix socket in a private
//! directory. The evaluation process opens two connections to it:
//! - *data* (`D<pid>`): frames of output (stdout/stderr bytes, runtime JSON messages, cell end),
//!   each cell end acknowledged by the kernel with one byte;
//! - *control* (`C<pid>`), opened by the runtime crate: newline-delimited JSON commands from the
//!   kernel (interrupt, input replies, task queries);
//! - *fast lane* (`F<pid>`): `run <library>` lines from the kernel for cells compiled outside
//!   evcxr while it warms up (see `fast_lane`).
//!
//! Data frames are `[kind: u8][len: u32 LE][payload]`. Nothing on the link is trusted to be
//! well formed (a cell can write to it): the hello line is read with a bound, a frame longer
//! than [`crate::limits`] allows is skipped without being stored (the user is told), an unknown
//! frame kind closes that connection.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// Start of a runtime frame inside the evaluation process's stdout (see the runtime crate).
pub const MARKER: &[u8] = b"\0RLP\0";
pub const HELLO_DATA: &str = "D";
pub const HELLO_CONTROL: &str = "C";
pub const HELLO_FAST: &str = "F";

/// Kinds of data frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Frame {
    Stdout = 1,
    Stderr = 2,
    /// A JSON message from the runtime crate or the evaluation loop.
    Runtime = 3,
    /// The cell finished and everything it printed came before this frame.
    CellEnd = 4,
}

impl Frame {
    fn from_byte(b: u8) -> Option<Frame> {
        Some(match b {
            1 => Frame::Stdout,
            2 => Frame::Stderr,
            3 => Frame::Runtime,
            4 => Frame::CellEnd,
            _ => return None,
        })
    }
}

/// Writes one data frame (evaluation-process side, blocking).
pub fn write_frame(out: &mut impl Write, kind: Frame, payload: &[u8]) -> std::io::Result<()> {
    if u32::try_from(payload.len()).is_err() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "link frame longer than 4 GiB",
        ));
    }
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(kind as u8);
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    out.write_all(&frame)
}

/// Something that arrived from the evaluation process.
#[derive(Debug)]
pub enum LinkEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Runtime(serde_json::Value),
    /// The data connection of an evaluation process closed.
    Closed,
}

/// The listening socket plus the current control connection.
pub struct Link {
    path: PathBuf,
    _dir: TempDirGuard,
    control: Arc<tokio::sync::Mutex<Option<tokio::net::unix::OwnedWriteHalf>>>,
    newest: Arc<Mutex<Newest>>,
}

type Control = Arc<tokio::sync::Mutex<Option<tokio::net::unix::OwnedWriteHalf>>>;

/// The newest evaluation process and its fast-lane connection.
#[derive(Default)]
struct Newest {
    pid: u32,
    fast: Option<std::os::unix::net::UnixStream>,
    /// The runtime of this process has connected its control connection.
    control: bool,
}

struct TempDirGuard(PathBuf);

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Called for every data frame, in order, on the link's task. A `CellEnd` frame is
/// acknowledged once every frame before it has been handed to the sink.
pub type Sink = Arc<dyn Fn(LinkEvent) + Send + Sync>;

impl Link {
    /// Binds the socket in a fresh private directory and starts accepting connections.
    pub fn start(sink: Sink) -> Result<Link> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "rustloop-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let path = dir.join("link.sock");
        let listener = UnixListener::bind(&path)?;
        let control = Arc::new(tokio::sync::Mutex::new(None));
        let newest = Arc::new(Mutex::new(Newest::default()));
        tokio::spawn(accept_loop(listener, sink, control.clone(), newest.clone()));
        Ok(Link {
            path,
            _dir: TempDirGuard(dir),
            control,
            newest,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the socket's directory (the process is about to exit without running
    /// destructors).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self._dir.0);
    }

    /// The process id of the newest evaluation process, once it has connected.
    pub fn child_pid(&self) -> Option<u32> {
        Some(self.newest.lock().unwrap().pid).filter(|&pid| pid != 0)
    }

    /// Sends a line to the evaluation process's fast-lane connection (blocking, from any
    /// thread); an error if it has not connected or is gone.
    pub fn send_fast(&self, line: &str) -> std::io::Result<()> {
        let mut newest = self.newest.lock().unwrap();
        let Some(stream) = newest.fast.as_mut() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the evaluation process has not connected yet",
            ));
        };
        let result = stream.write_all(format!("{line}\n").as_bytes());
        if result.is_err() {
            newest.fast = None;
        }
        result
    }

    /// Whether the runtime of the newest evaluation process has connected (so a control line
    /// reaches it).
    pub fn control_connected(&self) -> bool {
        self.newest.lock().unwrap().control
    }

    /// Sends a command line to the runtime crate in the evaluation process. Silently does
    /// nothing if the runtime has not connected yet (no cell has run: nothing to command).
    pub async fn command(&self, mut line: String) {
        let mut guard = self.control.lock().await;
        if let Some(writer) = guard.as_mut() {
            line.push('\n');
            if writer.write_all(line.as_bytes()).await.is_err() {
                *guard = None;
                self.newest.lock().unwrap().control = false;
            }
        }
    }
}

async fn accept_loop(
    listener: UnixListener,
    sink: Sink,
    control: Control,
    newest: Arc<Mutex<Newest>>,
) {
    // The newest evaluation process wins; a restarted evaluator connects afresh.
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sink = sink.clone();
        let control = control.clone();
        let newest = newest.clone();
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            let mut read = BufReader::new(read);
            let mut hello = String::new();
            // `D<pid>\n`: a bounded read, whatever a cell may send here.
            if (&mut read).take(32).read_line(&mut hello).await.is_err() || !hello.ends_with('\n') {
                return;
            }
            let pid: u32 = hello.get(1..).unwrap_or("").trim().parse().unwrap_or(0);
            if hello.starts_with(HELLO_DATA) {
                // The previous process's runtime is gone with it (cleared first: this
                // process's control connection is only taken once `newest` names it).
                *control.lock().await = None;
                *newest.lock().unwrap() = Newest {
                    pid,
                    ..Newest::default()
                };
                // The evaluation process leads its own process group: it must die with us.
                crate::watchdog::adopt_group(pid);
                tracing::debug!(pid, "evaluation process connected");
                serve_data(read, write, sink, crate::limits::get().frame).await;
            } else if hello.starts_with(HELLO_CONTROL) && newest.lock().unwrap().pid == pid {
                *control.lock().await = Some(write);
                newest.lock().unwrap().control = true;
            } else if hello.starts_with(HELLO_FAST) {
                // Blocking writes from the fast lane's thread; the process never writes back.
                let stream = read
                    .into_inner()
                    .reunite(write)
                    .ok()
                    .and_then(|s| s.into_std().ok())
                    .filter(|s| s.set_nonblocking(false).is_ok());
                // The data connection's hello may still be in flight on its own task.
                for _ in 0..200 {
                    {
                        let mut newest = newest.lock().unwrap();
                        if newest.pid == pid {
                            newest.fast = stream;
                            return;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        });
    }
}

async fn serve_data(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    sink: Sink,
    limit: usize,
) {
    let mut header = [0u8; 5];
    loop {
        if read.read_exact(&mut header).await.is_err() {
            break;
        }
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > limit {
            // Skip it in bounded chunks: the stream stays in step and nothing is stored.
            tracing::warn!(
                len,
                limit,
                "skipping an oversized frame from the evaluation process"
            );
            let mut rest = (&mut read).take(len as u64);
            let skipped = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
            if skipped.ok() != Some(len as u64) {
                break;
            }
            sink(LinkEvent::Stderr(
                format!(
                    "rustloop: dropped {len} bytes of output (more than the {limit}-byte limit, \
                     see --max-message-size)\n"
                )
                .into_bytes(),
            ));
            continue;
        }
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            break;
        }
        match Frame::from_byte(header[0]) {
            Some(Frame::Stdout) => sink(LinkEvent::Stdout(payload)),
            Some(Frame::Stderr) => sink(LinkEvent::Stderr(payload)),
            Some(Frame::Runtime) => match serde_json::from_slice(&payload) {
                Ok(value) => sink(LinkEvent::Runtime(value)),
                Err(e) => tracing::warn!("bad runtime frame: {e}"),
            },
            Some(Frame::CellEnd) => {
                // Every earlier frame has been handed to the sink: let the cell finish.
                if write.write_all(b"k").await.is_err() {
                    break;
                }
            }
            None => {
                tracing::warn!("unknown frame kind {}; closing link", header[0]);
                break;
            }
        }
    }
    sink(LinkEvent::Closed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mut out = Vec::new();
        write_frame(&mut out, Frame::Stderr, b"hi").unwrap();
        assert_eq!(out, [2, 2, 0, 0, 0, b'h', b'i']);
        assert_eq!(Frame::from_byte(4), Some(Frame::CellEnd));
        assert_eq!(Frame::from_byte(9), None);
    }

    #[tokio::test]
    async fn oversized_frames_are_skipped_and_the_stream_stays_in_step() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (read, write) = theirs.into_split();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let sink: Sink = Arc::new(move |event| {
            let text = match event {
                LinkEvent::Stdout(b) => format!("out:{}", String::from_utf8_lossy(&b)),
                LinkEvent::Stderr(b) => format!("err:{}", String::from_utf8_lossy(&b)),
                other => format!("{other:?}"),
            };
            seen.lock().unwrap().push(text)
        });
        let served = tokio::spawn(serve_data(BufReader::new(read), write, sink, 1000));
        let mut bytes = Vec::new();
        write_frame(&mut bytes, Frame::Stdout, &[b'x'; 1001]).unwrap();
        write_frame(&mut bytes, Frame::Stdout, b"after").unwrap();
        write_frame(&mut bytes, Frame::Runtime, b"[not json").unwrap();
        write_frame(&mut bytes, Frame::Stderr, &[b'y'; 1000]).unwrap();
        // A header that claims 4 GiB, then the connection closes.
        bytes.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff, b'z']);
        let (_, mut ours) = ours.into_split();
        ours.write_all(&bytes).await.unwrap();
        drop(ours);
        served.await.unwrap();
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events[0].starts_with("err:rustloop: dropped 1001 bytes"));
        assert_eq!(events[1], "out:after");
        assert_eq!(events[2], format!("err:{}", "y".repeat(1000)));
        assert_eq!(events[3], "Closed");
    }
}
