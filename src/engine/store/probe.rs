//! rustc spells the types of a cell's variables: after the cell compiled, the same crate is
//! type-checked again with `--cfg rustloop_probe`, which turns on one `probe(&x)` line per
//! variable (and one for its trait-object form). `probe` requires a trait no type implements,
//! so each fails with "the trait bound `T: Probe` is not satisfied", and `T` is printed with
//! full public paths (`-Ztrim-diagnostic-paths=false`, a `-Z` flag, hence `RUSTC_BOOTSTRAP=1`
//! for this check alone). It runs beside the next cells, off their path.
//!
//! The rustc wrapper saves the job ([`save_job`]): the compiler, its arguments and a copy of
//! the cell's source, since the next cell overwrites the file.

use super::Ty;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PROBE_MARK: &str = "// rustloop-probe ";

/// Where a running probe's answer arrives: the type found for each name.
pub type Found = mpsc::Receiver<BTreeMap<String, Ty>>;
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// A cell crate to type-check again.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    rustc: PathBuf,
    args: Vec<OsString>,
    source: PathBuf,
}

/// Drops a job nobody took (its cell failed after compiling, so it is never probed), with its
/// copy of the source.
pub fn drop_job(warnings_file: &Path) {
    if let Some(old) = ProbeJob::take(warnings_file) {
        let _ = std::fs::remove_file(old.source);
    }
}

/// Where the wrapper leaves the job of the last cell build (beside the warnings file).
fn job_file(warnings_file: &Path) -> PathBuf {
    warnings_file.with_file_name(".rustloop-probe.json")
}

/// The job's copy of the cell's source: `<prefix><wrapper pid><suffix>`, beside the job.
const COPY_PREFIX: &str = ".rustloop-probe-";
const COPY_SUFFIX: &str = ".rs";

/// Removes what an earlier session in this slot left behind: its last job and any source
/// copies whose probe never ended (the kernel was killed).
pub fn clear_jobs(warnings_file: &Path) {
    let _ = std::fs::remove_file(job_file(warnings_file));
    let Some(Ok(entries)) = warnings_file.parent().map(std::fs::read_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(COPY_PREFIX) && name.ends_with(COPY_SUFFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Called by the rustc wrapper after a cell crate compiled: remembers how to probe it, if its
/// source has probe lines.
pub fn save_job(rustc: &Path, args: &[OsString], source: &Path, warnings_file: &Path) {
    let Ok(text) = std::fs::read_to_string(source) else {
        return;
    };
    if !text.contains(PROBE_MARK) {
        return;
    }
    drop_job(warnings_file);
    let copy =
        warnings_file.with_file_name(format!("{COPY_PREFIX}{}{COPY_SUFFIX}", std::process::id()));
    if std::fs::write(&copy, text).is_err() {
        return;
    }
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if Path::new(a) == source {
                copy.to_string_lossy().into_owned()
            } else {
                a.to_string_lossy().into_owned()
            }
        })
        .collect();
    let job = json!({"rustc": rustc, "args": args, "source": copy});
    let _ = std::fs::write(job_file(warnings_file), job.to_string());
}

impl ProbeJob {
    /// Takes the job the wrapper left (so a later cell never reads it again).
    pub fn take(warnings_file: &Path) -> Option<ProbeJob> {
        let file = job_file(warnings_file);
        let text = std::fs::read_to_string(&file).ok()?;
        let _ = std::fs::remove_file(&file);
        let job: Value = serde_json::from_str(&text).ok()?;
        Some(ProbeJob {
            rustc: job["rustc"].as_str()?.into(),
            args: job["args"]
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str().map(OsString::from))
                .collect(),
            source: job["source"].as_str()?.into(),
        })
    }

    /// Runs the probe on a thread; the receiver gets the types found for `names`.
    pub fn start(self, names: Vec<String>) -> Found {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("rustloop-type-probe".into())
            .spawn(move || {
                let started = Instant::now();
                let found = self.run(&names);
                tracing::info!("type probe: {found:?} in {:.2?}", started.elapsed());
                let _ = std::fs::remove_file(&self.source);
                let _ = tx.send(found);
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the type probe: {e}");
        }
        rx
    }

    fn run(&self, names: &[String]) -> BTreeMap<String, Ty> {
        // The check fails by design and writes nothing; rustc still makes the directory, so it
        // lies in the slot rather than one per session in /tmp.
        let out = self.source.with_file_name(".rustloop-probe-out");
        let mut command = std::process::Command::new(&self.rustc);
        command
            .args(probe_args(&self.args))
            .args([
                "--cfg",
                "rustloop_probe",
                "--emit=metadata",
                "--error-format=json",
            ])
            .args([
                "-Ztrim-diagnostic-paths=false",
                "-Zwrite-long-types-to-disk=no",
            ])
            .arg("--out-dir")
            .arg(&out)
            .env("RUSTC_BOOTSTRAP", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let output = match spawn_with_timeout(command) {
            Ok(output) => output,
            Err(e) => {
                tracing::warn!("type probe: {e}");
                return BTreeMap::new();
            }
        };
        let source = std::fs::read_to_string(&self.source).unwrap_or_default();
        parse(&String::from_utf8_lossy(&output), &source, names)
    }
}

fn spawn_with_timeout(mut command: std::process::Command) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // Behind the cell compiles it overlaps with (on two cores, the next cell's).
            libc::setpriority(libc::PRIO_PROCESS, 0, 10);
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    // rustc's stderr ends when it exits: no polling between its end and the answer.
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(bytes) => {
            child.wait()?;
            Ok(bytes)
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other("rustc took too long"))
        }
    }
}

/// The cell build's arguments without what writes files or picks an output format.
fn probe_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if matches!(
            text.as_ref(),
            "-o" | "--out-dir" | "--emit" | "--error-format" | "--json"
        ) {
            iter.next();
            continue;
        }
        if text.starts_with("--emit=")
            || text.starts_with("--error-format=")
            || text.starts_with("--json=")
            || text.starts_with("--out-dir=")
        {
            continue;
        }
        if text == "-C" {
            if let Some(value) = iter.next()
                && !value.to_string_lossy().starts_with("incremental=")
            {
                out.push(arg.clone());
                out.push(value.clone());
            }
            continue;
        }
        out.push(arg.clone());
    }
    out
}

/// Types from rustc's JSON diagnostics, by the probe line each error points at.
fn parse(stderr: &str, source: &str, names: &[String]) -> BTreeMap<String, Ty> {
    let lines: Vec<&str> = source.lines().collect();
    let mut own: BTreeMap<String, String> = BTreeMap::new();
    let mut boxed: BTreeMap<String, String> = BTreeMap::new();
    for diagnostic in stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if diagnostic["code"]["code"] != "E0277" {
            continue;
        }
        let Some(span) = diagnostic["spans"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["is_primary"] == true))
        else {
            continue;
        };
        let Some(line) = span["line_start"]
            .as_u64()
            .and_then(|n| lines.get((n as usize).checked_sub(1)?))
        else {
            continue;
        };
        let Some((kind, name)) = line
            .rsplit_once(PROBE_MARK)
            .and_then(|(_, m)| m.trim().split_once(' '))
        else {
            continue;
        };
        let Some(ty) = diagnostic["message"].as_str().and_then(bound_type) else {
            continue;
        };
        match kind {
            "own" => own.insert(name.to_owned(), ty),
            _ if ty != "()" => boxed.insert(name.to_owned(), ty),
            _ => None,
        };
    }
    names
        .iter()
        .map(|name| {
            let ty = match (own.get(name), boxed.get(name)) {
                (Some(t), _) if writable(t) => Ty::Own(t.clone()),
                (_, Some(b)) if writable(b) => Ty::Boxed(b.clone()),
                (Some(t), _) => Ty::Unnamed(t.clone()),
                (None, _) => Ty::Unnamed("a type rustc does not spell".to_owned()),
            };
            (name.clone(), ty)
        })
        .collect()
}

/// The `T` of "the trait bound `T: rustloop::__store::Probe` is not satisfied", with what
/// type inference would still have done (the error comes before its defaults are applied).
fn bound_type(message: &str) -> Option<String> {
    let ty = message
        .strip_prefix("the trait bound `")?
        .strip_suffix("` is not satisfied")?
        .rsplit_once(": ")?
        .0;
    Some(with_inference_defaults(ty))
}

/// Literals default to `i32`/`f64`; in edition 2024 a diverging expression's type (`_`, e.g.
/// the output of a task that loops forever) defaults to `!`, which a cell writes as
/// `rustloop::__private::Never`.
fn with_inference_defaults(ty: &str) -> String {
    let ty = ty.replace("{integer}", "i32").replace("{float}", "f64");
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == '\'';
    let mut out = String::with_capacity(ty.len());
    for (i, c) in ty.char_indices() {
        let standalone = c == '_'
            && !ty[..i].ends_with(is_word)
            && !ty[i + 1..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
        let never = c == '!' && !ty[i + 1..].starts_with('=');
        if standalone || never {
            out.push_str("rustloop::__private::Never");
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a later cell can write `ty`.
fn writable(ty: &str) -> bool {
    const UNNAMEABLE: &[&str] = &[
        "{closure",
        "{async",
        "{coroutine",
        "{static",
        "{extern",
        "{unknown",
        "{type error",
        "{opaque",
        "impl ",
        "...",
        "{fn ",
    ];
    !ty.is_empty() && !UNNAMEABLE.iter().any(|u| ty.contains(u))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnostic(line: usize, ty: &str) -> String {
        json!({"code": {"code": "E0277"},
               "message": format!("the trait bound `{ty}: rustloop::__store::Probe` is not satisfied"),
               "spans": [{"is_primary": true, "line_start": line}]})
        .to_string()
    }

    #[test]
    fn types_come_from_the_probe_lines() {
        let source = "fn x() {\n\
            #[cfg(rustloop_probe)] probe(&m); // rustloop-probe own m\n\
            #[cfg(rustloop_probe)] probe(&f); // rustloop-probe own f\n\
            #[cfg(rustloop_probe)] probe(&b(f)); // rustloop-probe boxed f\n\
            #[cfg(rustloop_probe)] probe(&n); // rustloop-probe own n\n\
            #[cfg(rustloop_probe)] probe(&h); // rustloop-probe own h\n\
            #[cfg(rustloop_probe)] probe(&b(h)); // rustloop-probe boxed h\n}";
        let stderr = [
            diagnostic(2, "std::collections::HashMap<i32, m::Q>"),
            diagnostic(3, "{closure@src/lib.rs:3:1: 3:9}"),
            diagnostic(
                4,
                "std::boxed::Box<(dyn std::ops::FnMut(i32) -> i32 + 'static)>",
            ),
            diagnostic(5, "{integer}"),
            diagnostic(6, "tokio::task::JoinHandle<_>"),
            diagnostic(7, "()"),
        ]
        .join("\n");
        let names = ["m", "f", "n", "h", "z"].map(String::from);
        let found = parse(&stderr, source, &names);
        assert_eq!(
            found["m"],
            Ty::Own("std::collections::HashMap<i32, m::Q>".into())
        );
        assert_eq!(
            found["f"],
            Ty::Boxed("std::boxed::Box<(dyn std::ops::FnMut(i32) -> i32 + 'static)>".into())
        );
        assert_eq!(found["n"], Ty::Own("i32".into()));
        assert_eq!(
            found["h"],
            Ty::Own("tokio::task::JoinHandle<rustloop::__private::Never>".into())
        );
        assert!(matches!(found["z"], Ty::Unnamed(_)));
        assert_eq!(
            with_inference_defaults("&'_ my_type<_, '_>"),
            "&'_ my_type<rustloop::__private::Never, '_>"
        );
    }

    #[test]
    fn outputs_and_incremental_state_are_not_shared_with_the_cell_build() {
        let args: Vec<OsString> = [
            "--crate-name",
            "ctx",
            "--emit=dep-info,link",
            "-C",
            "incremental=/x",
            "-C",
            "opt-level=0",
            "--out-dir",
            "/o",
            "--json=artifacts",
            "src/lib.rs",
        ]
        .map(OsString::from)
        .to_vec();
        let kept: Vec<String> = probe_args(&args)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            kept,
            ["--crate-name", "ctx", "-C", "opt-level=0", "src/lib.rs"]
        );
    }

    #[test]
    fn jobs_that_are_never_probed_leave_no_files() {
        let dir = std::env::temp_dir().join(format!("rustloop-probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let warnings = dir.join(".rustloop-warnings.jsonl");
        let source = dir.join("lib.rs");
        std::fs::write(&source, format!("fn f() {{}} {PROBE_MARK}own x\n")).unwrap();
        let files = || {
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".rustloop-probe"))
                .collect();
            names.sort();
            names
        };
        // a job whose cell failed after compiling: nobody takes it
        let untaken = dir.join(".rustloop-probe-1.rs");
        std::fs::write(&untaken, "fn f() {}").unwrap();
        let job = json!({"rustc": "rustc", "args": [], "source": untaken});
        std::fs::write(job_file(&warnings), job.to_string()).unwrap();

        save_job(
            Path::new("rustc"),
            &[source.clone().into()],
            &source,
            &warnings,
        );
        let own = format!(".rustloop-probe-{}.rs", std::process::id());
        assert_eq!(files(), [own.as_str(), ".rustloop-probe.json"]);
        let job = ProbeJob::take(&warnings).unwrap();
        assert_eq!(job.args, [OsString::from(dir.join(&own))]);
        assert_eq!(files(), [own.as_str()]);

        // a killed kernel's copy and job are gone when the next session starts
        save_job(
            Path::new("rustc"),
            &[source.clone().into()],
            &source,
            &warnings,
        );
        std::fs::write(&untaken, "fn f() {}").unwrap();
        clear_jobs(&warnings);
        assert_eq!(files(), Vec::<String>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
