//! The fast lane: cells that arrive while evcxr is still warming up.
//!
//! evcxr's start costs about 5 s even with every crate already built, nearly all of it
//! rust-analyzer reading std and tokio (evcxr asks it for the types of `let` variables before
//! every compile). A cell that keeps no variables does not need that: while the warm-up runs on
//! one core, the fast lane compiles such a cell itself on the other, as a small crate against
//! the same cached tokio and runtime library (same profile, flags and lock file, so cargo finds
//! them fresh), and the evaluation process evcxr already started loads and runs it.
//!
//! Eligible cells are those [`cell::fast_lane_eligible`](super::cell::fast_lane_eligible)
//! accepts: definitions, `let`s (kept by the variable store like any cell's) and statements, no
//! commands. Their definitions (`fn`, `struct`, `use`, ...) are kept and
//! handed to evcxr when the warm-up ends, so later cells see them. A cell the fast lane cannot
//! compile goes to evcxr unchanged, which reports the errors as for any cell. Once evcxr is
//! warm the lane closes for the rest of the session.

use super::cache::{self, CELL_RUSTFLAGS, Slot, cell_dependencies};
use super::link::Link;
use super::outcome::{cell_location, evaluator_died, interrupted_while_compiling, judge_run};
use super::router::{CellState, FastEnd, Router};
use super::store::Plan;
use super::{Execute, Outcome};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

/// Set (to anything) to send every cell through evcxr, e.g. to compare timings.
pub const DISABLE_ENV: &str = "RUSTLOOP_NO_FAST_LANE";

const CRATE_NAME: &str = "rustloop_fast";

pub struct FastLane {
    /// The lane's crate, inside the cache slot (kept between sessions, like its lock file).
    dir: PathBuf,
    /// evcxr's target directory in the same slot, where tokio and the runtime are built.
    target: PathBuf,
    warnings_file: PathBuf,
    /// Set before taking `lane` in `close`, read with `lane` held in `run`: a cell either
    /// finishes before the lane closes or does not start.
    closed: AtomicBool,
    /// The evaluation process died during a fast-lane cell (evcxr must start a new one).
    child_died: AtomicBool,
    lane: Mutex<Lane>,
    toolchain: OnceLock<Option<cache::Toolchain>>,
    /// The dependencies every cell has (tokio and the runtime crate).
    base_deps: Vec<(String, String)>,
}

#[derive(Default)]
struct Lane {
    /// Definitions of the cells run so far, in order.
    items: Vec<String>,
    /// Crates added by the cells' `:dep` lines, as Cargo.toml `name = spec` pairs.
    deps: Vec<(String, String)>,
    builds: u64,
}

impl FastLane {
    /// A lane over `slot`; open only if the slot has built tokio and the runtime before (on a
    /// cold slot the warm-up builds them, and the lane would only wait for that).
    pub fn new(slot: &Slot, warnings_file: PathBuf) -> FastLane {
        let dir = slot.dir.join("fast-lane");
        let enabled =
            slot.is_warm() && std::env::var_os(DISABLE_ENV).is_none() && prepare(slot, &dir);
        FastLane {
            dir,
            target: slot.dir.join("target"),
            warnings_file,
            closed: AtomicBool::new(!enabled),
            child_died: AtomicBool::new(false),
            lane: Mutex::new(Lane::default()),
            toolchain: OnceLock::new(),
            base_deps: cell_dependencies(slot).to_vec(),
        }
    }

    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }

    /// Closes the lane (waiting for a cell in flight) and returns what evcxr must now learn,
    /// as one cell: the `:dep` lines, then the definitions.
    pub fn close(&self) -> String {
        self.closed.store(true, Ordering::SeqCst);
        let mut lane = self.lane.lock().unwrap();
        let deps: String = std::mem::take(&mut lane.deps)
            .iter()
            .map(|(name, spec)| format!(":dep {name} = {spec}\n"))
            .collect();
        deps + &std::mem::take(&mut lane.items).join("\n")
    }

    /// Whether the evaluation process died during a fast-lane cell.
    pub fn child_died(&self) -> bool {
        self.child_died.load(Ordering::SeqCst)
    }

    /// Runs a cell (rewritten around the variable store) on the lane, with the cell's final
    /// state. `None` if it cannot (the lane closed, the cell did not compile, no evaluation
    /// process yet): the caller sends the cell to evcxr.
    ///
    /// If the evaluation process dies, the error names `lost` (the variables kept until then)
    /// and what `exit_status` says. `deps`: the cell's `:dep` lines (see `cell::lane_deps`),
    /// resolved offline like every lane build: a crate cargo has not seen before goes to evcxr.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        router: &Router,
        link: &Link,
        execute: &Execute,
        plan: &Plan,
        deps: &[(String, String)],
        lost: &[String],
        exit_status: &dyn Fn() -> Option<String>,
    ) -> Option<(Outcome, CellState)> {
        let mut lane = self.lane.lock().unwrap();
        if !self.is_open() {
            return None;
        }
        let new_deps: Vec<(String, String)> = deps
            .iter()
            .filter(|(name, spec)| !lane.deps.contains(&(name.clone(), spec.clone())))
            .cloned()
            .collect();
        let all_deps = |lane_deps: &[(String, String)], extra: &[(String, String)]| {
            let mut all = self.base_deps.clone();
            for dep in lane_deps.iter().chain(extra) {
                all.retain(|(name, _)| *name != dep.0);
                all.push(dep.clone());
            }
            all
        };
        if !new_deps.is_empty() && lane.builds > 0 {
            // A new crate can change the features of a crate the runtime library is built from;
            // the runtime is then rebuilt and the evaluation process restarted, with the values
            // and tasks of the cells before. evcxr's path notices that and says what was lost.
            tracing::info!("fast lane: a new `:dep` after earlier cells goes to evcxr");
            return None;
        }
        if !new_deps.is_empty() && !write_manifest(&self.dir, &all_deps(&lane.deps, &new_deps)) {
            return None;
        }
        let toolchain = self
            .toolchain
            .get_or_init(|| cache::toolchain().ok())
            .as_ref()?;
        let source = crate_source(&lane.items, &plan.items, &plan.body);
        std::fs::write(self.dir.join("src").join("lib.rs"), &source).ok()?;
        *router.state.lock().unwrap() = CellState {
            fast_lane: true,
            ..CellState::for_cell(execute)
        };
        let finish = |outcome: Option<Outcome>| {
            let state = std::mem::take(&mut *router.state.lock().unwrap());
            outcome.map(|o| (o, state))
        };
        lane.builds += 1;
        let started = std::time::Instant::now();
        let built = self.build(router, toolchain, lane.builds);
        if !new_deps.is_empty() {
            if matches!(built, Build::Built(_)) {
                lane.deps.extend(new_deps);
            } else {
                write_manifest(&self.dir, &all_deps(&lane.deps, &[]));
            }
        }
        let library = match built {
            Build::Built(library) => library,
            Build::Interrupted => {
                return finish(Some(Outcome {
                    error: Some(interrupted_while_compiling()),
                    ..Outcome::default()
                }));
            }
            Build::Failed(why) => {
                tracing::info!("fast lane: {why}; the cell goes to evcxr");
                return finish(None);
            }
        };
        let built_in = started.elapsed();
        let (tx, rx) = mpsc::channel();
        *router.fast_waiter.lock().unwrap() = Some(tx);
        if let Err(e) = send_when_connected(link, &format!("run {}", library.display())) {
            tracing::info!("fast lane: {e}; the cell goes to evcxr");
            router.fast_waiter.lock().unwrap().take();
            return finish(None);
        }
        let end = rx.recv().unwrap_or(FastEnd::Died);
        let _ = std::fs::remove_file(&library);
        let mut state = std::mem::take(&mut *router.state.lock().unwrap());
        let error = match end {
            FastEnd::Ran(Err(e)) => {
                tracing::warn!("fast lane: the evaluation process could not run the cell: {e}");
                return finish(None);
            }
            FastEnd::Ran(Ok(())) => {
                if let Some(panic) = &mut state.panic {
                    panic.location = cell_location(&panic.location, &source, &execute.code);
                }
                judge_run(&state, &execute.label)
            }
            FastEnd::Died => {
                self.child_died.store(true, Ordering::SeqCst);
                state.died = true;
                let status = exit_status().unwrap_or_else(|| "exit status not known".into());
                Some(evaluator_died(&state, &status, lost, false))
            }
        };
        tracing::info!(
            "fast lane: cell {} compiled in {built_in:.2?}, finished after {:.2?}",
            execute.label,
            started.elapsed()
        );
        if error.is_none() {
            lane.items.extend(plan.items.iter().cloned());
        }
        *router.state.lock().unwrap() = state;
        finish(Some(Outcome {
            error,
            ..Outcome::default()
        }))
    }

    /// Compiles the lane's crate; stops early if the cell is interrupted.
    fn build(&self, router: &Router, toolchain: &cache::Toolchain, n: u64) -> Build {
        let _ = std::fs::remove_file(&self.warnings_file);
        let log = |name: &str| std::fs::File::create(self.dir.join(name));
        let (Ok(stdout), Ok(stderr)) = (log("build.json"), log("build.log")) else {
            return Build::Failed("cannot write the build log".into());
        };
        // The toolchain's own binaries, as evcxr uses (rustup's proxies may not be on PATH).
        let tool = |name: &str| {
            toolchain
                .target_libdir
                .ancestors()
                .nth(4)
                .map(|sysroot| sysroot.join("bin").join(name))
                .filter(|path| path.exists())
                .unwrap_or_else(|| PathBuf::from(name))
        };
        let mut command = std::process::Command::new(tool("cargo"));
        command
            .args(["--offline", "build", "--message-format=json", "--target"])
            .arg(&toolchain.host)
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", &self.target)
            .env("CARGO_BUILD_BUILD_DIR", &self.target)
            .env("RUSTC", tool("rustc"))
            .env("RUSTFLAGS", CELL_RUSTFLAGS)
            .env(super::wrapper::WRAPPER_ENV, "1")
            .env(super::wrapper::WARNINGS_FILE_ENV, &self.warnings_file)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Its own process group: an interrupt stops this build and nothing else.
            .process_group(0);
        if let Ok(exe) = std::env::current_exe() {
            command.env("RUSTC_WRAPPER", exe);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Build::Failed(format!("cannot run cargo: {e}")),
        };
        // Its group (cargo, our rustc wrapper, rustc, the linker) dies with the kernel.
        crate::watchdog::adopt_group(child.id());
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Build::Failed(format!("waiting for cargo: {e}")),
            }
            if router.state.lock().unwrap().interrupt_requested {
                // SAFETY: signalling the process group we created.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Build::Interrupted;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !status.success() {
            return Build::Failed(format!("the cell did not compile on its own ({status})"));
        }
        let Some(built) = built_library(&self.dir.join("build.json")) else {
            return Build::Failed("cargo reported no library".into());
        };
        // A new name per cell: the evaluation process never unloads a library, and loading
        // the same path again would return the old one.
        let library = self.dir.join(format!("cell-{}-{n}.so", std::process::id()));
        match std::fs::rename(&built, &library) {
            Ok(()) => Build::Built(library),
            Err(e) => Build::Failed(format!("moving {}: {e}", built.display())),
        }
    }
}

enum Build {
    Built(PathBuf),
    Interrupted,
    Failed(String),
}

/// Writes the lane's manifest (evcxr's profile and the same dependencies, so cargo reuses
/// evcxr's builds) and, the first time, evcxr's lock file (the same versions).
fn prepare(slot: &Slot, dir: &Path) -> bool {
    let lock = dir.join("Cargo.lock");
    let prepared = std::fs::create_dir_all(dir.join("src")).is_ok()
        && write_manifest(dir, &cell_dependencies(slot))
        && (lock.exists() || std::fs::copy(slot.dir.join("Cargo.lock"), &lock).is_ok());
    if prepared {
        // Libraries of an earlier session's cells.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().ends_with(".so") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    prepared
}

/// The lane crate's manifest with these dependencies.
fn write_manifest(dir: &Path, deps: &[(String, String)]) -> bool {
    let manifest = format!(
        r#"[package]
name = "{CRATE_NAME}"
version = "1.0.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]
path = "src/lib.rs"

# Its own workspace, not part of evcxr's crate in the directory above.
[workspace]

[profile.dev]
opt-level = 0
debug = false
strip = "debuginfo"
rpath = true
lto = false
debug-assertions = true
codegen-units = 16
panic = 'unwind'
incremental = true
overflow-checks = true

[dependencies]
{}
"#,
        deps.iter()
            .map(|(name, spec)| format!("{name} = {spec}\n"))
            .collect::<String>()
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).is_ok()
}

/// The crate for one cell: earlier cells' definitions, this cell's, and the statements in an
/// exported function that reports a panic instead of unwinding into the caller.
fn crate_source(earlier: &[String], items: &[String], body: &str) -> String {
    let mut source = String::from("use rustloop as _;\n");
    for item in earlier.iter().chain(items) {
        source.push_str(item);
        source.push('\n');
    }
    source.push_str(
        "#[unsafe(no_mangle)]\npub extern \"C\" fn rustloop_fast_cell() -> i32 {\n\
         let cell = std::panic::AssertUnwindSafe(|| {\n",
    );
    source.push_str(body);
    source.push_str("});\nstd::panic::catch_unwind(cell).is_err() as i32\n}\n");
    source
}

/// The `.so` cargo built for the lane's crate, from its JSON messages.
fn built_library(messages: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(messages).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == CRATE_NAME)
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "so"))
}

/// The evaluation process connects a moment after evcxr starts it.
fn send_when_connected(link: &Link, line: &str) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match link.send_fast(line) {
            Err(e)
                if e.kind() == std::io::ErrorKind::NotConnected
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::cell;
    use super::*;

    #[test]
    fn crate_source_keeps_earlier_definitions_and_catches_panics() {
        let prepared = cell::prepare("async fn two() -> u8 { 2 }\nlet t = two().await;");
        let plan = crate::engine::store::Variables::default()
            .plan(&prepared, &Default::default(), true, &Default::default())
            .unwrap();
        let source = crate_source(
            &["use std::time::Duration;".to_owned()],
            &plan.items,
            &plan.body,
        );
        let duration = source.find("use std::time::Duration;").unwrap();
        let two = source.find("async fn two()").unwrap();
        let run = source.find("rustloop_fast_cell").unwrap();
        assert!(duration < two && two < run, "{source}");
        assert!(source.contains("rustloop::__await(two())"), "{source}");
        assert!(source.contains("rustloop::__store::keep(\"t\""), "{source}");
        assert!(source.contains("catch_unwind(cell)"), "{source}");
    }
}
