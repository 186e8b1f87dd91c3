//! The persistent build cache: where evcxr compiles cells, so tokio, the runtime crate and
//! `:dep` crates are compiled once per machine and toolchain instead of once per session.
//!
//! Layout under `$RUSTLOOP_CACHE_DIR` (default `~/.cache/rustloop`):
//! ```text
//! <key>/runtime/            the runtime crate's source, written from this binary
//! <key>/slot-<n>/           an evcxr crate directory (Cargo.toml, src/, target/)
//! <key>/slot-<n>.lock       flock held by the kernel using slot n
//! <key>/shared-<id>/        slots seeded from the installation's shared cache
//!                           (`shared_cache.rs`), same layout
//! ```
//! `<key>` combines rustloop's version and a hash of the runtime crate's sources, so a rustloop
//! update starts a fresh cache instead of reusing a stale one (cargo notices a new rustc). Each running kernel holds an exclusive
//! lock on one slot, so two kernels never build in the same directory; a new slot is seeded
//! from a warm one. Cargo's own fingerprints make an interrupted (half-written) build safe to
//! resume.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The runtime crate's sources, embedded in the binary.
const RUNTIME_FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../runtime/Cargo.toml")),
    ("src/lib.rs", include_str!("../../runtime/src/lib.rs")),
    (
        "src/display.rs",
        include_str!("../../runtime/src/display.rs"),
    ),
    (
        "src/json/mod.rs",
        include_str!("../../runtime/src/json/mod.rs"),
    ),
    (
        "src/json/value.rs",
        include_str!("../../runtime/src/json/value.rs"),
    ),
    ("src/link.rs", include_str!("../../runtime/src/link.rs")),
    ("src/origin.rs", include_str!("../../runtime/src/origin.rs")),
    ("src/tasks.rs", include_str!("../../runtime/src/tasks.rs")),
    (
        "src/store/mod.rs",
        include_str!("../../runtime/src/store/mod.rs"),
    ),
    (
        "src/store/cell.rs",
        include_str!("../../runtime/src/store/cell.rs"),
    ),
    (
        "src/store/kinds.rs",
        include_str!("../../runtime/src/store/kinds.rs"),
    ),
    ("src/comm.rs", include_str!("../../runtime/src/comm.rs")),
    (
        "src/widgets/mod.rs",
        include_str!("../../runtime/src/widgets/mod.rs"),
    ),
    (
        "src/widgets/model.rs",
        include_str!("../../runtime/src/widgets/model.rs"),
    ),
    (
        "src/widgets/controls.rs",
        include_str!("../../runtime/src/widgets/controls.rs"),
    ),
    (
        "src/widgets/choices.rs",
        include_str!("../../runtime/src/widgets/choices.rs"),
    ),
    (
        "src/widgets/containers.rs",
        include_str!("../../runtime/src/widgets/containers.rs"),
    ),
];

/// Marks a slot whose dependencies have been built once.
pub const WARM_MARKER: &str = ".rustloop-warm";
/// In a slot: what completion learned from rust-analyzer (`analysis/fallback.rs`).
pub const COMPLETIONS_FILE: &str = ".rustloop-completions.json";

/// A locked cache slot, held for the life of the kernel.
pub struct Slot {
    pub dir: PathBuf,
    pub runtime_dir: PathBuf,
    _lock: File,
}

impl Slot {
    /// Whether this slot has built the runtime before (then warm-up can stay offline).
    pub fn is_warm(&self) -> bool {
        self.dir.join(WARM_MARKER).exists()
    }

    pub fn mark_warm(&self) {
        let _ = std::fs::write(self.dir.join(WARM_MARKER), b"");
    }
}

/// The cache root.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUSTLOOP_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("rustloop")
}

/// `<rustloop version>-<hash of the runtime sources>`. The toolchain is not part of the key:
/// cargo notices a new rustc by itself and rebuilds the slot once, and running `rustc` here
/// would delay every kernel start.
pub fn key() -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (name, text) in RUNTIME_FILES {
        hasher.update(name.as_bytes());
        hasher.update(text.as_bytes());
    }
    format!(
        "{}-{}",
        env!("CARGO_PKG_VERSION"),
        hex::encode(&hasher.finalize()[..6])
    )
}

/// What the evaluation process needs to know about the toolchain.
pub struct Toolchain {
    /// e.g. `1.95.0`
    pub release: String,
    /// e.g. `x86_64-unknown-linux-gnu`
    pub host: String,
    /// Where `libstd-*.so` lives.
    pub target_libdir: PathBuf,
}

/// Asks rustc (about 25 ms per call, so done off the kernel's startup path).
pub fn toolchain() -> Result<Toolchain> {
    let run = |args: &[&str]| -> Result<String> {
        let output = std::process::Command::new("rustc")
            .args(args)
            .output()
            .context("cannot run `rustc`: is Rust installed and on PATH?")?;
        if !output.status.success() {
            bail!(
                "`rustc {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let info = run(&["-vV"])?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("unknown")
            .trim()
            .to_owned()
    };
    Ok(Toolchain {
        release: field("release: "),
        host: field("host: "),
        target_libdir: PathBuf::from(run(&["--print", "target-libdir"])?.trim()),
    })
}

/// Locks a free slot of this user's own cache (creating it if needed) and writes the runtime
/// crate's sources. A cold slot is seeded from a warm sibling.
pub fn acquire_private() -> Result<Slot> {
    let base = root().join(key());
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let runtime_dir = base.join("runtime");
    write_runtime(&runtime_dir)?;
    lock_slot(&base, runtime_dir, &|dir| {
        seed_from_warm_slot(&base, dir);
        Ok(())
    })
}

/// Locks the first free `slot-<n>` under `base`; a slot that is not warm yet is first handed
/// to `seed` (which may fill it, and may fail: then no slot is taken).
pub fn lock_slot(
    base: &Path,
    runtime_dir: PathBuf,
    seed: &dyn Fn(&Path) -> Result<()>,
) -> Result<Slot> {
    for n in 0..64 {
        let Some(lock) = try_lock(&base.join(format!("slot-{n}.lock")))? else {
            continue;
        };
        let dir = base.join(format!("slot-{n}"));
        if !dir.join(WARM_MARKER).exists() {
            seed(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        return Ok(Slot {
            dir,
            runtime_dir,
            _lock: lock,
        });
    }
    bail!("all 64 cache slots under {} are in use", base.display())
}

/// Locks the one slot at `dir` (lock file `<dir>.lock`), for the installer's build.
pub fn lock_dir(dir: PathBuf, runtime_dir: PathBuf) -> Result<Slot> {
    let lock_path = dir.with_extension("lock");
    let Some(lock) = try_lock(&lock_path)? else {
        bail!("{} is in use by another process", dir.display());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Slot {
        dir,
        runtime_dir,
        _lock: lock,
    })
}

/// An exclusive lock on `path`, or `None` if another process holds it.
fn try_lock(path: &Path) -> Result<Option<File>> {
    let lock = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; released when the File closes (at exit).
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    Ok(Some(lock))
}

/// Writes the runtime sources, touching files only when their content changed (cargo
/// fingerprints path dependencies by modification time).
pub fn write_runtime(dir: &Path) -> Result<()> {
    for (name, text) in RUNTIME_FILES {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(*text) {
            continue;
        }
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        // Write-then-rename so a concurrent reader never sees half a file.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Copies the build products of a warm slot into a new one, so a second concurrent kernel does
/// not rebuild tokio from scratch. Best effort: on any failure the slot just starts cold.
fn seed_from_warm_slot(base: &Path, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let warm = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p != dir && p.join(WARM_MARKER).exists());
    let Some(warm) = warm else { return };
    let _ = std::fs::remove_dir_all(dir);
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(&warm)
        .arg(dir)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// RUSTFLAGS of every cell build: `-Cprefer-dynamic` is evcxr's own flag (we replace
/// RUSTFLAGS wholesale); `tokio_unstable` enables the task hooks behind `:tasks`.
pub const CELL_RUSTFLAGS: &str = "-Cprefer-dynamic --cfg tokio_unstable";

/// The dependencies every cell has, as Cargo.toml `name = spec` pairs.
pub fn cell_dependencies(slot: &Slot) -> [(String, String); 2] {
    dependencies(&slot.runtime_dir)
}

/// The dependencies of a cell whose runtime crate's sources are in `runtime_dir`.
pub fn dependencies(runtime_dir: &Path) -> [(String, String); 2] {
    [
        (
            "tokio".to_owned(),
            r#"{ version = "1", features = ["full"] }"#.to_owned(),
        ),
        (
            "rustloop-runtime".to_owned(),
            format!(
                "{{ path = {} }}",
                Value::from(runtime_dir.to_string_lossy().into_owned())
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_files_are_rewritten_only_when_changed() {
        let dir = std::env::temp_dir().join(format!("rustloop-cache-test-{}", std::process::id()));
        write_runtime(&dir).unwrap();
        let lib = dir.join("src/lib.rs");
        let before = std::fs::metadata(&lib).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_runtime(&dir).unwrap();
        assert_eq!(std::fs::metadata(&lib).unwrap().modified().unwrap(), before);
        std::fs::write(&lib, "stale").unwrap();
        write_runtime(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(&lib).unwrap(), RUNTIME_FILES[1].1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_runtime_source_file_is_embedded() {
        fn sources(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    sources(&path, root, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let relative = path.strip_prefix(root).unwrap();
                    out.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
        let mut found = Vec::new();
        sources(&root.join("src"), &root, &mut found);
        for file in found {
            assert!(
                RUNTIME_FILES.iter().any(|(name, _)| *name == file),
                "runtime/{file} is not in RUNTIME_FILES"
            );
        }
    }
}
