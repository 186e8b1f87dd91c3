//! The output pump of the evaluation process: reads the pipes behind fd 1 and fd 2, forwards
//! text and the runtime's framed messages to the kernel over the link as they happen, and
//! passes only evcxr's protocol lines on to evcxr (after making sure the kernel has everything
//! a finished cell printed).

use super::*;

/// Moves the evaluation process's output to the kernel.
pub(super) struct Pump {
    pub(super) data: UnixStream,
    pub(super) proto_out: std::fs::File,
    pub(super) out: std::fs::File,
    pub(super) err: std::fs::File,
    /// Bytes from fd 1 not yet classified (a marker or protocol line may be incomplete).
    pub(super) pending: Vec<u8>,
    /// Whether the last text forwarded ended a line (protocol lines start lines).
    pub(super) at_line_start: bool,
}

impl Pump {
    pub(super) fn run(mut self) {
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
