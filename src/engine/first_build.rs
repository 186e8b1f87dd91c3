//! The progress display of a session's first build on a cold cache slot (tokio and the
//! rustloop runtime compile once per machine): one `display_data` under the cell that waits
//! for it, updated in place every second (`update_display_data`) with what is compiling, how
//! many crates are done and an estimate, and finalized when the evaluator is warm. It replaces
//! a red stderr banner that made a normal first start look like an error.

use super::Output;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One display per process (the engine's first build happens once).
static STARTED: AtomicBool = AtomicBool::new(false);

/// How long the first build takes on 2 cores when nothing is known yet.
const TYPICAL: Duration = Duration::from_secs(60);

/// Shows the display and keeps it current from a thread until `done()` (the evaluator is
/// warm). Does nothing after the first call.
pub fn show(
    slot_dir: PathBuf,
    emit: impl Fn(Output) + Send + 'static,
    done: impl Fn() -> bool + Send + 'static,
) {
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let display_id = format!("rustloop-first-build-{}", std::process::id());
    let started = Instant::now();
    let first = progress(&slot_dir, started.elapsed());
    emit(Output::Display {
        data: bundle(&first),
        metadata: Map::new(),
        display_id: Some(display_id.clone()),
    });
    let spawned = std::thread::Builder::new()
        .name("rustloop-first-build".into())
        .spawn(move || {
            while !done() {
                std::thread::sleep(Duration::from_secs(1));
                if done() {
                    break;
                }
                emit(Output::Update {
                    data: bundle(&progress(&slot_dir, started.elapsed())),
                    metadata: Map::new(),
                    display_id: display_id.clone(),
                });
            }
            let text = format!(
                "rustloop: compiled tokio and the rustloop runtime in {} s (once per machine; \
                 later sessions start in about a second).",
                started.elapsed().as_secs()
            );
            emit(Output::Update {
                data: text_bundle(&text, &text, 1.0),
                metadata: Map::new(),
                display_id,
            });
        });
    if let Err(e) = spawned {
        tracing::warn!("no first-build progress display: {e}");
    }
}

/// What the build has done so far.
struct Progress {
    done: usize,
    total: usize,
    /// The crates built most recently (what is compiling now is after them).
    latest: Vec<String>,
    elapsed: Duration,
}

fn progress(slot_dir: &Path, elapsed: Duration) -> Progress {
    let (built, latest) = built_crates(&slot_dir.join("target"));
    let total = expected_crates(&slot_dir.join("Cargo.lock")).max(built.len() + 1);
    Progress {
        done: built.len(),
        total,
        latest,
        elapsed,
    }
}

/// Crates with a finished library in the slot's target directories (host and target deps),
/// and the names of the three newest.
fn built_crates(target: &Path) -> (BTreeSet<String>, Vec<String>) {
    let mut built = BTreeSet::new();
    let mut newest: Vec<(std::time::SystemTime, String)> = Vec::new();
    // `debug/deps` (build scripts, proc macros) and `<target triple>/debug/deps` (the rest).
    let mut dirs = vec![target.join("debug/deps")];
    if let Ok(entries) = std::fs::read_dir(target) {
        dirs.extend(entries.flatten().map(|e| e.path().join("debug/deps")));
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name
                .strip_suffix(".rlib")
                .or_else(|| name.strip_suffix(".so"))
                .and_then(|s| s.strip_prefix("lib"))
            else {
                continue;
            };
            let krate = stem.rsplit_once('-').map_or(stem, |(k, _)| k).to_owned();
            if krate == "ctx" || krate.starts_with("rustloop_fast") {
                continue;
            }
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest.push((modified, krate.clone()));
            }
            built.insert(krate);
        }
    }
    newest.sort();
    let latest = newest.into_iter().rev().take(3).map(|(_, k)| k).collect();
    (built, latest)
}

/// Packages of the slot's lock file that build on this platform (not the cell's own crate).
fn expected_crates(lock: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(lock) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|n| n.trim_end_matches('"'))
        .filter(|n| {
            *n != "ctx"
                && !["windows", "wasi", "redox", "hermit", "bitflags"]
                    .iter()
                    .any(|p| n.starts_with(p))
        })
        .count()
}

fn bundle(p: &Progress) -> Map<String, Value> {
    let fraction = (p.done as f64 / p.total.max(1) as f64).min(0.99);
    let estimate = if p.done >= 3 && fraction > 0.05 {
        let left = p.elapsed.as_secs_f64() * (1.0 - fraction) / fraction;
        format!("about {} s left", left.round() as u64)
    } else {
        format!("usually about {} s on 2 cores", TYPICAL.as_secs())
    };
    let latest = if p.latest.is_empty() {
        String::new()
    } else {
        format!(" (last built: {})", p.latest.join(", "))
    };
    let text = format!(
        "rustloop: first session on this machine, compiling tokio and the rustloop runtime once: \
         {} of about {} crates{latest}, {} s so far, {estimate}. Later sessions start in about a \
         second.",
        p.done,
        p.total,
        p.elapsed.as_secs()
    );
    let html = format!(
        "first session on this machine, compiling tokio and the rustloop runtime once: {} of \
         about {} crates{latest}, {} s so far, {estimate}",
        p.done,
        p.total,
        p.elapsed.as_secs()
    );
    text_bundle(&text, &html, fraction)
}

fn text_bundle(text: &str, html_text: &str, fraction: f64) -> Map<String, Value> {
    let html = format!(
        "<div class=\"rustloop-first-build\"><progress value=\"{:.0}\" max=\"100\" \
         style=\"width: 20em\"></progress> <span>{}</span></div>",
        fraction * 100.0,
        html_escape(html_text)
    );
    let mut data = Map::new();
    data.insert("text/plain".into(), json!(text));
    data.insert("text/html".into(), json!(html));
    data
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_built_and_expected_crates() {
        let dir = std::env::temp_dir().join(format!("rustloop-first-build-{}", std::process::id()));
        let deps = dir.join("target/debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        for f in [
            "libtokio-1a.rlib",
            "libtokio-1a.rmeta",
            "libtokio_macros-2b.so",
            "libctx.so",
            "x.d",
        ] {
            std::fs::write(deps.join(f), b"").unwrap();
        }
        std::fs::write(
            dir.join("Cargo.lock"),
            "[[package]]\nname = \"ctx\"\n[[package]]\nname = \"tokio\"\n[[package]]\nname = \
             \"tokio-macros\"\n[[package]]\nname = \"windows-sys\"\n[[package]]\nname = \"mio\"\n",
        )
        .unwrap();
        let p = progress(&dir, Duration::from_secs(10));
        assert_eq!((p.done, p.total), (2, 3));
        let data = bundle(&p);
        let text = data["text/plain"].as_str().unwrap();
        assert!(text.contains("2 of about 3 crates"), "{text}");
        assert!(
            data["text/html"]
                .as_str()
                .unwrap()
                .contains("<progress value=\"67\"")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
