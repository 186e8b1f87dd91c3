//! How cells are compiled: rustloop as cargo's `RUSTC_WRAPPER`, and the direct build that
//! skips cargo when only the cell's source changed.
//!
//! For a cell crate (`ctx`, evcxr's; `rustloop_fast`, the fast lane's) the build
//! ([`compile_cell`]) tees rustc's JSON diagnostics into the warnings file (`warnings.rs`),
//! saves the job the variable store's type probe re-checks, and for `ctx` replaces cargo's
//! `-C metadata` with the type generation (`store/generation.rs`). The runtime crate gets the
//! flag that turns on its per-task output capture (`runtime/src/origin.rs`). Other crates go
//! to rustc untouched.
//!
//! Once cargo has built `ctx`, the wrapper saves the exact rustc command ([`BuildJob`]). For
//! the next cells evcxr asks [`Direct`] first (vendor/evcxr/RUSTLOOP-PATCH.md), which runs that
//! command itself while the crate's manifest, lock file and cargo config are unchanged: the
//! cell's source is the only input that changed, so cargo's work (fingerprinting every
//! dependency, starting this wrapper) would decide nothing. A `:` command, a `:dep`, a changed
//! manifest or a missing job sends the build back through cargo, which saves a new job.
//!
//! A small cell crate compiles with one codegen unit and no incremental state, a large one as
//! cargo would ([`cell_codegen`]); both link with `rustloop-link` (`src/bin/rustloop-link.rs`)
//! when it is installed. An interrupt during a build stops it ([`kill_builds`]).

use super::store::{TypeGeneration, save_job, types_file};
use super::warnings::keep_warnings;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Set in cargo's environment to make this binary act as the rustc wrapper.
pub const WRAPPER_ENV: &str = "RUSTLOOP_RUSTC_WRAPPER";
/// Where the wrapper appends kept diagnostics (JSON lines).
pub const WARNINGS_FILE_ENV: &str = "RUSTLOOP_WARNINGS_FILE";

fn crate_name(args: &[OsString]) -> Option<&OsString> {
    args.windows(2)
        .find(|w| w[0] == "--crate-name")
        .map(|w| &w[1])
}

/// If cargo started this process as the rustc wrapper, runs rustc and never returns.
pub fn run_if_rustc_wrapper() {
    if std::env::var_os(WRAPPER_ENV).is_none() {
        return;
    }
    let mut args = std::env::args_os().skip(1);
    let Some(rustc) = args.next() else {
        eprintln!("rustloop: rustc wrapper called without a compiler");
        std::process::exit(2);
    };
    let args: Vec<OsString> = args.collect();
    let name = crate_name(&args).cloned();
    let is_cell = name
        .as_ref()
        .is_some_and(|n| n == "ctx" || n == "rustloop_fast");
    let file = std::env::var_os(WARNINGS_FILE_ENV).map(PathBuf::from);
    let (true, Some(file)) = (is_cell, file) else {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(&rustc);
        command.args(&args);
        if name.is_some_and(|n| n == "rustloop") {
            // The runtime crate captures each task's printed text per poll (see
            // `runtime/src/origin.rs`), which needs std's unstable output capture.
            command
                .args(["--cfg", "rustloop_capture"])
                .env("RUSTC_BOOTSTRAP", "1");
        }
        let error = command.exec();
        eprintln!("rustloop: cannot run {}: {error}", rustc.to_string_lossy());
        std::process::exit(2);
    };
    let mut command = Command::new(&rustc);
    command.stdin(Stdio::inherit()).stdout(Stdio::inherit());
    let output = match compile_cell(command, &args, &file, |_| {}) {
        Ok(output) => output,
        Err(e) => {
            eprintln!("rustloop: cannot run {}: {e}", rustc.to_string_lossy());
            std::process::exit(2);
        }
    };
    let _ = std::io::stderr().write_all(&output.stderr);
    if output.status.success()
        && crate_name(&args).is_some_and(|n| n == "ctx")
        && let Ok(cwd) = std::env::current_dir()
    {
        BuildJob::save(Path::new(&rustc), &args, &cwd, &file);
    }
    std::process::exit(output.status.code().unwrap_or(1));
}

/// Runs `rustc` (a command with the compiler as its program) on a cell crate with cargo's
/// `args`, doing what rustloop adds to a cell build; `started` gets rustc's process id. rustc's
/// stderr is returned, not shown.
pub fn compile_cell(
    mut rustc: Command,
    args: &[OsString],
    warnings_file: &Path,
    started: impl FnOnce(u32),
) -> Result<Output> {
    let mut args = args.to_vec();
    let is_lib = |a: &OsString| a.to_string_lossy().ends_with("src/lib.rs");
    // The source as rustc sees it (relative to its working directory) and as we read it.
    let source = args
        .iter()
        .find(|a| is_lib(a))
        .map(|a| rustc_relative(&rustc, Path::new(a)));
    let mut type_state = None;
    let mut source_len = None;
    if let Some(source) = &source
        && crate_name(&args).is_some_and(|n| n == "ctx")
        && let Ok(text) = std::fs::read_to_string(source)
    {
        source_len = Some(text.len());
        let types = TypeGeneration::new(&text, types_file(warnings_file));
        // Cargo's own metadata hashes the dependencies too, so a `:dep` would change every
        // `TypeId` of the crate and kept values of its types could no longer be read.
        args = without_metadata(args);
        args.push("-C".into());
        args.push(format!("metadata=rustloop-types-{}", types.generation).into());
        type_state = Some(types);
    }
    let args = cell_codegen(args, source_len);
    cell_linker(&mut rustc, &args, warnings_file);
    let child = rustc.args(&args).stderr(Stdio::piped()).spawn()?;
    started(child.id());
    let output = child.wait_with_output()?;
    keep_warnings(&output.stderr, warnings_file);
    if output.status.success() {
        if let Some(source) = &source {
            // The probe re-checks a copy of the source, from its own working directory.
            let probe_args: Vec<OsString> = args
                .iter()
                .map(|a| {
                    if is_lib(a) {
                        source.clone().into()
                    } else {
                        a.clone()
                    }
                })
                .collect();
            save_job(
                Path::new(rustc.get_program()),
                &probe_args,
                source,
                warnings_file,
            );
        }
        // Only definitions that compiled count (a cell that does not compile is discarded).
        if let Some(types) = type_state {
            types.commit();
        }
    }
    Ok(output)
}

type Result<T> = std::io::Result<T>;

/// `path` as the command sees it (relative paths are relative to its working directory).
fn rustc_relative(command: &Command, path: &Path) -> PathBuf {
    match command.get_current_dir() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_owned(),
    }
}

/// From this many bytes of cell crate source, a cell compiles incrementally, as cargo would.
/// evcxr puts every earlier definition into each cell's crate, so its source grows with the
/// notebook and rustc checks it all again each time; incremental state lets it reuse what did
/// not change, as long as earlier definitions stay where they were (evcxr patch 5 keeps them in
/// the order they were defined). End to end (medians, two sessions each), after 40 cells that
/// each add a function and a struct (about 6 KB): `let` 0.28 s without it, 0.25 s with it, a
/// cell with a type error 0.22 s and 0.14 s; with a few definitions, incremental cost about
/// 35 ms a cell.
const INCREMENTAL_FROM: usize = 4096;

/// A cell crate's codegen: one codegen unit, and no incremental state while its source is small
/// ([`INCREMENTAL_FROM`]). The profile's 16 units suit tokio (built once, in parallel); a cell
/// is a few dozen functions, where each extra unit is one more LLVM module and object file to
/// set up, emit and link, and the incremental state is written for a source the next cell
/// replaces. Measured on a warm `let` cell (rustc alone, medians of 21): 183 ms as cargo builds
/// it, 154 ms with both. After 40 definition cells, incremental with one unit against 16
/// (rustc alone, medians of 3 replays of the same 12 cells): `let` 88-107 ms against 103-114,
/// an expression 92-94 against 110-112, an iterator 88 against 104; definitions and type errors
/// the same.
fn cell_codegen(args: Vec<OsString>, source_len: Option<usize>) -> Vec<OsString> {
    let mut args = without_codegen_option(args, "codegen-units=");
    if source_len.is_none_or(|n| n < INCREMENTAL_FROM) {
        args = without_codegen_option(args, "incremental=");
    }
    args.push("-Ccodegen-units=1".into());
    args
}

/// Links the cell with `rustloop-link` (`src/bin/rustloop-link.rs`, which says why) when it
/// sits next to this binary, unless the build names its own linker.
fn cell_linker(rustc: &mut Command, args: &[OsString], warnings_file: &Path) {
    let names_linker = args.iter().any(|a| {
        let a = a.to_string_lossy();
        a.starts_with("linker=") || a.starts_with("-Clinker=")
    });
    if names_linker || std::env::var_os("RUSTLOOP_NO_DIRECT_LINK").is_some() {
        return;
    }
    let Some(shim) = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("rustloop-link"))
        .filter(|shim| shim.is_file())
    else {
        return;
    };
    let mut linker = OsString::from("-Clinker=");
    linker.push(shim);
    rustc
        .arg(linker)
        // Read by rustloop-link: the driver rustc would have run, and where it keeps what the
        // driver adds.
        .env("RUSTLOOP_CELL_LINKER", "cc")
        .env(
            "RUSTLOOP_LINK_TEMPLATE",
            warnings_file.with_file_name(".rustloop-link-template.json"),
        );
}

/// `args` without `-C metadata=...`.
fn without_metadata(args: Vec<OsString>) -> Vec<OsString> {
    without_codegen_option(args, "metadata=")
}

/// `args` without the `-C <prefix>...` options.
fn without_codegen_option(args: Vec<OsString>, prefix: &str) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter().peekable();
    while let Some(arg) = iter.next() {
        if arg == "-C"
            && iter
                .peek()
                .is_some_and(|next| next.to_string_lossy().starts_with(prefix))
        {
            iter.next();
            continue;
        }
        if arg.to_string_lossy().starts_with(&format!("-C{prefix}")) {
            continue;
        }
        out.push(arg);
    }
    out
}

/// The rustc command cargo ran for the cell crate, and what it depended on.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct BuildJob {
    rustc: PathBuf,
    args: Vec<String>,
    /// cargo's `CARGO_*` variables (for `env!` in cells).
    env: Vec<(String, String)>,
    cwd: PathBuf,
    inputs: String,
}

fn job_file(warnings_file: &Path) -> PathBuf {
    warnings_file.with_file_name(".rustloop-build-job.json")
}

/// What the job depends on besides the cell's source: the manifest, the lock file and cargo's
/// configuration in the crate directory.
fn inputs(crate_dir: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for name in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        hasher.update(name.as_bytes());
        hasher.update(std::fs::read(crate_dir.join(name)).unwrap_or_default());
    }
    hex::encode(hasher.finalize())
}

impl BuildJob {
    fn save(rustc: &Path, args: &[OsString], cwd: &Path, warnings_file: &Path) {
        let Some(args) = args
            .iter()
            .map(|a| a.to_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        let job = BuildJob {
            rustc: rustc.to_owned(),
            // The output keeps the name cargo gives it after the build (`libctx.so`).
            args: without_codegen_option(
                args.into_iter().map(OsString::from).collect(),
                "extra-filename=",
            )
            .into_iter()
            .filter_map(|a| a.into_string().ok())
            .collect(),
            env: std::env::vars()
                .filter(|(k, _)| k.starts_with("CARGO") && k != "CARGO_MAKEFLAGS")
                .collect(),
            cwd: cwd.to_owned(),
            inputs: inputs(cwd),
        };
        if let Ok(text) = serde_json::to_string(&job) {
            let _ = std::fs::write(job_file(warnings_file), text);
        }
    }

    /// Forgets the job: the next cell goes through cargo.
    pub fn forget(warnings_file: &Path) {
        let _ = std::fs::remove_file(job_file(warnings_file));
    }

    fn load(warnings_file: &Path) -> Option<BuildJob> {
        serde_json::from_str(&std::fs::read_to_string(job_file(warnings_file)).ok()?).ok()
    }

    /// The shared object rustc writes, and where cargo would put it after the build: next
    /// to the uplifted runtime library, which the cell finds through its `$ORIGIN` RUNPATH.
    /// (The evaluation process may have started before `deps/` existed, and glibc then never
    /// looks there again.)
    fn outputs(&self) -> Option<(PathBuf, PathBuf)> {
        let dir = self
            .cwd
            .join(&self.args.windows(2).find(|w| w[0] == "--out-dir")?[1]);
        let uplifted = dir.parent()?.join("libctx.so");
        Some((dir.join("libctx.so"), uplifted))
    }
}

/// Builds evcxr's cell crate with the saved job when nothing but its source changed.
pub struct Direct {
    pub warnings_file: PathBuf,
}

impl evcxr::DirectBuild for Direct {
    fn build(&self, crate_dir: &Path) -> Option<Result<Output>> {
        let Some(job) = BuildJob::load(&self.warnings_file) else {
            tracing::debug!("cell build through cargo: no saved rustc job");
            return None;
        };
        let same_dir =
            std::fs::canonicalize(&job.cwd).ok() == std::fs::canonicalize(crate_dir).ok();
        if !same_dir || job.inputs != inputs(crate_dir) {
            tracing::debug!("cell build through cargo: the manifest, lock or config changed");
            return None;
        }
        let (built, uplifted) = job.outputs()?;
        let started = std::time::Instant::now();
        let output = self.run(&job, &built, &uplifted);
        tracing::info!(
            "cell built by rustc without cargo in {:?}",
            started.elapsed()
        );
        Some(output)
    }
}

impl Direct {
    fn run(&self, job: &BuildJob, built: &Path, uplifted: &Path) -> Result<Output> {
        use std::os::unix::process::CommandExt;
        let mut rustc = Command::new(&job.rustc);
        rustc
            .current_dir(&job.cwd)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own process group, which dies with the kernel (like cargo's builds).
            .process_group(0);
        // Only the library: the dependency file is for cargo's fingerprints, and cargo rebuilds
        // the crate anyway when it next builds it (its source changed).
        let args: Vec<OsString> = job
            .args
            .iter()
            .map(|a| match a.as_str() {
                "--emit=dep-info,link" => OsString::from("--emit=link"),
                _ => OsString::from(a),
            })
            .collect();
        let mut output = compile_cell(rustc, &args, &self.warnings_file, |pid| {
            crate::watchdog::adopt_group(pid)
        })?;
        // What cargo would pass on: diagnostics (not rustc's artifact notices) on stderr, the
        // shared object in a `compiler-artifact` message on stdout.
        output.stderr = String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|l| !l.starts_with(r#"{"$message_type":"artifact""#))
            .flat_map(|l| [l, "\n"])
            .collect::<String>()
            .into_bytes();
        if output.status.success() {
            std::fs::rename(built, uplifted)?;
            let artifact = serde_json::json!({
                "reason": "compiler-artifact",
                "target": {"name": "ctx"},
                "filenames": [uplifted],
            });
            output.stdout = format!("{artifact}\n").into_bytes();
        }
        Ok(output)
    }
}

/// Kills the build processes (cargo, rustc) evcxr started from this process, leaving the
/// evaluation process alone.
pub fn kill_builds(evaluation_pid: Option<u32>) {
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

    fn cargo_args() -> Vec<OsString> {
        [
            "src/lib.rs",
            "-C",
            "codegen-units=16",
            "-C",
            "incremental=/t/inc",
            "-Cprefer-dynamic",
        ]
        .map(OsString::from)
        .to_vec()
    }

    #[test]
    fn cells_compile_in_one_unit_and_large_ones_incrementally() {
        let small: Vec<String> = cell_codegen(cargo_args(), Some(1500))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            small,
            ["src/lib.rs", "-Cprefer-dynamic", "-Ccodegen-units=1"]
        );
        let large: Vec<String> = cell_codegen(cargo_args(), Some(INCREMENTAL_FROM))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            large,
            [
                "src/lib.rs",
                "-C",
                "incremental=/t/inc",
                "-Cprefer-dynamic",
                "-Ccodegen-units=1"
            ]
        );
        // the fast lane's crate (its source is not measured) stays in one unit
        assert_eq!(
            cell_codegen(cargo_args(), None),
            cell_codegen(cargo_args(), Some(1500))
        );
    }
}
