//! Nothing the kernel starts outlives it: the watchdog process.
//!
//! The kernel starts builds it cannot instrument (evcxr spawns cargo from its own thread without
//! a `pre_exec` hook; cargo spawns rustc through our wrapper, rustc the linker, cargo build
//! scripts, evcxr `sh` for `!` commands), and the fast lane and the evaluation process run in
//! process groups of their own. `PR_SET_PDEATHSIG` only covers a direct child of a thread, so
//! instead:
//!
//! - at start the kernel makes itself the leader of its own process group (it already is when
//!   Jupyter starts it, in a new session); every process it starts without choosing another
//!   group is in that group;
//! - the groups the kernel does create (a fast-lane build, an evaluation process) are
//!   *adopted*: their ids are written to the watchdog;
//! - the watchdog is this binary again, detached (a double fork, so it is nobody's build
//!   process and no test or interrupt mistakes it for one) in a session of its own, ignoring
//!   SIGINT/SIGTERM/SIGHUP. It holds the read end of a pipe whose only write end is the
//!   kernel's (close-on-exec). When the kernel ends, however it ends (`kill -9` included), the
//!   pipe reads EOF and the watchdog SIGKILLs every one of those groups that still has a
//!   member in the kernel's session, then exits. It also checks every half second that the
//!   kernel process is still the same one, in case the pipe were ever held open.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

/// Set (to the kernel's pid) only in the watchdog's environment.
const ENV: &str = "RUSTLOOP_WATCHDOG";

/// The write end of the pipe to the watchdog (close-on-exec, never inherited).
static PIPE: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// Starts the watchdog. Call from the kernel before any other thread exists.
pub fn start() {
    // SAFETY: plain syscalls on this process.
    let leader = unsafe {
        if libc::getpgid(0) != libc::getpid() {
            libc::setpgid(0, 0);
        }
        libc::getpgid(0) == libc::getpid()
    };
    if !leader {
        tracing::warn!("cannot lead a process group; build processes may outlive the kernel");
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        tracing::warn!(
            "cannot start the watchdog: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    // SAFETY: fresh descriptors from pipe2.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = std::process::Command::new(exe)
        .env(ENV, std::process::id().to_string())
        .env("RUSTLOOP_WATCHDOG_GROUP", if leader { "1" } else { "0" })
        .stdin(read)
        .stdout(std::process::Stdio::null())
        .spawn();
    match spawned.and_then(|mut launcher| launcher.wait()) {
        Ok(status) if status.success() => {
            let _ = PIPE.set(Mutex::new(std::fs::File::from(write)));
        }
        Ok(status) => tracing::warn!("the watchdog did not start ({status})"),
        Err(e) => tracing::warn!("cannot start the watchdog: {e}"),
    }
}

/// Hands the process group led by `pid` to the watchdog, if `pid` is our child leading its own
/// group (checked, so a stray pid can never make the watchdog signal someone else's group).
/// Tells the watchdog the kernel is ending as asked (a shutdown request): what it stops then
/// is routine and goes unreported.
pub fn ending_as_asked() {
    if let Some(pipe) = PIPE.get() {
        let _ = pipe.lock().unwrap().write_all(b"asked\n");
    }
}

pub fn adopt_group(pid: u32) {
    let Some(pipe) = PIPE.get() else { return };
    let Ok(pid_i) = i32::try_from(pid) else {
        return;
    };
    // SAFETY: getpgid only reads.
    let own_group = pid_i > 1 && unsafe { libc::getpgid(pid_i) } == pid_i;
    let our_child = stat(pid).is_some_and(|s| s.ppid == std::process::id() as i32);
    if own_group && our_child {
        let _ = pipe
            .lock()
            .unwrap()
            .write_all(format!("{pid}\n").as_bytes());
    }
}

/// The fields of `/proc/<pid>/stat` the watchdog uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    session: i32,
    start: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name may contain spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// If this process is the watchdog, runs it and exits.
pub fn run_if_watchdog() {
    let Some(kernel) = std::env::var(ENV).ok().and_then(|v| v.parse::<u32>().ok()) else {
        return;
    };
    let kernel_group = std::env::var("RUSTLOOP_WATCHDOG_GROUP").as_deref() == Ok("1");
    // SAFETY: this process has one thread; the parent half exits at once (its exit status
    // tells the kernel the watchdog runs), the child half is reparented and carries on.
    unsafe {
        match libc::fork() {
            -1 => libc::_exit(1),
            0 => {}
            _ => libc::_exit(0),
        }
        // A session of its own: no terminal or group signal meant for the kernel reaches it.
        libc::setsid();
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGPIPE,
            libc::SIGQUIT,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    let Some(first) = stat(kernel) else {
        std::process::exit(0);
    };
    let mut groups: Vec<i32> = Vec::new();
    if kernel_group && first.pgrp == kernel as i32 {
        groups.push(first.pgrp);
    }
    let asked = watch(kernel, first.start, &mut groups);
    let killed = kill_groups(&groups, first.session, kernel);
    if killed > 0 && !asked {
        eprintln!("rustloop: the kernel ended; stopped {killed} process(es) it had started");
    }
    std::process::exit(0);
}

/// Reads adopted group ids from stdin until EOF or until the kernel is gone; whether the kernel
/// said it was ending as asked.
fn watch(kernel: u32, start: u64, groups: &mut Vec<i32>) -> bool {
    let mut asked = false;
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    let mut pending = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 500) };
        if ready > 0 {
            // SAFETY: reading into a local buffer.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return asked; // EOF: the kernel is gone
            }
            pending.extend_from_slice(&buf[..n as usize]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                asked |= line == b"asked\n";
                if let Some(pgid) = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.trim().parse::<i32>().ok())
                    .filter(|&g| g > 1 && !groups.contains(&g))
                {
                    groups.push(pgid);
                }
            }
            if pending.len() > 64 {
                pending.clear(); // not ours: only the kernel writes here
            }
        } else if ready < 0
            && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            return asked;
        }
        match stat(kernel) {
            Some(s) if s.start == start && s.state != 'Z' && s.state != 'X' => {}
            _ => return asked,
        }
    }
}

/// SIGKILLs each of `groups` that still has a member in `session`; repeats briefly for
/// processes that were being forked. Returns how many processes were signalled.
fn kill_groups(groups: &[i32], session: i32, kernel: u32) -> usize {
    let me = std::process::id() as i32;
    let mut killed = 0;
    for _ in 0..10 {
        let mut live = Vec::new();
        let mut members = 0;
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                let Some(s) = stat(pid) else { continue };
                // The kernel itself may still be exiting (its end of the pipe closes before it
                // becomes a zombie); it is not one of the processes it left behind.
                if pid as i32 != me
                    && pid != kernel
                    && s.state != 'Z'
                    && s.state != 'X'
                    && s.session == session
                    && groups.contains(&s.pgrp)
                {
                    members += 1;
                    if !live.contains(&s.pgrp) {
                        live.push(s.pgrp);
                    }
                }
            }
        }
        if live.is_empty() {
            break;
        }
        killed += members;
        for pgrp in live {
            // SAFETY: signalling a process group of the dead kernel's, in its session.
            unsafe { libc::kill(-pgrp, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_tricky_command_name() {
        let text = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 0 0";
        let s = parse_stat(text).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                session: 4242,
                start: 987654
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_stat_is_readable() {
        let s = stat(std::process::id()).unwrap();
        // SAFETY: plain getters.
        unsafe {
            assert_eq!(s.pgrp, libc::getpgid(0));
            assert_eq!(s.session, libc::getsid(0));
        }
    }
}
