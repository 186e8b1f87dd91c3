//! The installation's shared, read-only build cache: `rustloop install --sys-prefix` (or
//! `--prefix P`) builds tokio and the runtime crate once into `<prefix>/share/rustloop/cache`,
//! and every user's kernel seeds its own slot from it instead of compiling them again.
//!
//! Layout of the shared cache (`$RUSTLOOP_SHARED_CACHE`, set in the kernelspec's `env`):
//! ```text
//! <key>/manifest.json       written last: rustloop version and `rustc -vV` of the build
//! <key>/runtime/            the runtime crate's sources
//! <key>/src/<name>-<ver>/   tokio and its dependencies, copied from the registry
//! <key>/.cargo/config.toml  `[patch.crates-io]` pointing each of them at `src/`
//! <key>/slot/               the evcxr crate directory they were built in (target/ inside)
//! ```
//! Cargo decides whether a registry crate is fresh partly from the absolute path of its sources,
//! which lies in each user's own `CARGO_HOME`; artifacts built by one user would look stale to
//! every other. Built as path dependencies (the patch) in one shared place, the path is the same
//! for all. A user's slot lives under `~/.cache/rustloop/<key>/shared-<id>/` next to a copy of
//! the patch config (cargo reads `.cargo/config.toml` of every parent directory), holds copies
//! of the small bookkeeping files (fingerprints, dep-info, build-script output, with their
//! modification times) and symbolic links to the large artifacts, so an extra user costs
//! about a megabyte until they add a `:dep`. Anything cargo rebuilds is written as a new file in
//! the user's slot; the shared files are only read.
//!
//! When the variable names a cache that is missing, unreadable, for another rustloop version or
//! built by another toolchain, the kernel says so once in its log and uses the per-user cache.

use super::cache::{self, COMPLETIONS_FILE, Slot, WARM_MARKER};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Names the shared cache directory (the kernelspec's `env` sets it).
pub const ENV: &str = "RUSTLOOP_SHARED_CACHE";
const MANIFEST: &str = "manifest.json";
/// Files at least this large are linked rather than copied into a user's slot.
const LINK_AT: u64 = 16 * 1024;

/// A usable shared cache for this rustloop version and toolchain.
struct Shared {
    /// `<shared dir>/<key>`
    base: PathBuf,
    /// Identifies this build of the shared cache (a hash of its manifest).
    id: String,
}

/// Locks a cache slot for this kernel: seeded from the shared cache when one is configured
/// and usable, else (saying why, once) from the user's own cache.
pub fn acquire() -> Result<Slot> {
    match find() {
        Ok(None) => {}
        Ok(Some(shared)) => match acquire_seeded(&shared) {
            Ok(slot) => {
                tracing::info!(
                    "using the shared build cache {} (slot {})",
                    shared.base.display(),
                    slot.dir.display()
                );
                return Ok(slot);
            }
            Err(e) => tracing::warn!(
                "shared build cache {} not used ({e:#}); building tokio and the runtime in {} \
                 instead",
                shared.base.display(),
                cache::root().display()
            ),
        },
        Err(reason) => tracing::warn!(
            "shared build cache not used: {reason}; building tokio and the runtime in {} instead",
            cache::root().display()
        ),
    }
    cache::acquire_private()
}

/// The shared cache named by [`ENV`]: `Ok(None)` if none is configured, `Err(why)` if it
/// cannot be used.
fn find() -> std::result::Result<Option<Shared>, String> {
    let Some(dir) = std::env::var_os(ENV).filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let base = PathBuf::from(dir).join(cache::key());
    let manifest_path = base.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        format!(
            "cannot read {} ({e}; built for another rustloop version, or not built?)",
            manifest_path.display()
        )
    })?;
    let manifest: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON ({e})", manifest_path.display()))?;
    let built_with = manifest["rustc"].as_str().unwrap_or_default();
    let ours = rustc_version().map_err(|e| format!("{e:#}"))?;
    if built_with != ours {
        return Err(format!(
            "it was built by a different toolchain ({}; this kernel uses {})",
            first_line(built_with),
            first_line(&ours)
        ));
    }
    for needed in ["slot/target", "runtime", "src", ".cargo"] {
        std::fs::read_dir(base.join(needed))
            .map_err(|e| format!("cannot read {} ({e})", base.join(needed).display()))?;
    }
    // A rebuilt cache (new patch set or toolchain) gets fresh user slots.
    let patch = std::fs::read(base.join(".cargo/config.toml")).unwrap_or_default();
    use sha2::Digest;
    let id = hex::encode(
        &sha2::Sha256::new()
            .chain_update(&text)
            .chain_update(&patch)
            .finalize()[..4],
    );
    Ok(Some(Shared { base, id }))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("unknown")
}

/// `rustc -vV`, which names the release, commit and host.
fn rustc_version() -> Result<String> {
    let output = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run `rustc`: is Rust installed and on PATH?")?;
    if !output.status.success() {
        bail!("`rustc -vV` failed");
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A slot under `<user cache>/<key>/shared-<id>/`, seeded from the shared cache if cold.
fn acquire_seeded(shared: &Shared) -> Result<Slot> {
    let base = cache::root()
        .join(cache::key())
        .join(format!("shared-{}", shared.id));
    let config = base.join(".cargo/config.toml");
    let patch = std::fs::read(shared.base.join(".cargo/config.toml"))?;
    if std::fs::read(&config).ok().as_deref() != Some(&patch[..]) {
        std::fs::create_dir_all(base.join(".cargo"))
            .with_context(|| format!("creating {}", base.display()))?;
        std::fs::write(&config, &patch)?;
    }
    cache::lock_slot(&base, shared.base.join("runtime"), &|dir| {
        seed(&shared.base.join("slot"), dir).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(dir);
        })
    })
}

/// Fills a user's slot from the shared slot: its lock file, and its target directory mirrored
/// (small files copied with their times, large ones linked), without the cells' own artifacts
/// and incremental state. Marks the slot warm.
fn seed(from: &Path, dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    copy_with_time(&from.join("Cargo.lock"), &dir.join("Cargo.lock"))?;
    // What completion learned at install (best effort: a cache without it still works).
    let _ = std::fs::copy(from.join(COMPLETIONS_FILE), dir.join(COMPLETIONS_FILE));
    mirror(&from.join("target"), &dir.join("target"))?;
    std::fs::write(dir.join(WARM_MARKER), b"")?;
    Ok(())
}

/// Build products of the cells themselves (evcxr's `ctx`, the fast lane's crates), which each
/// user builds anew, and state only the next build of the same crate reads.
fn is_cell_artifact(name: &str) -> bool {
    let name = name.strip_prefix("lib").unwrap_or(name);
    name.starts_with("ctx")
        || name.starts_with("code_")
        || name.starts_with("rustloop_fast")
        || name.starts_with("rustloop-fast")
        || name == "incremental"
        || name == ".cargo-lock"
}

fn mirror(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if is_cell_artifact(&name.to_string_lossy()) {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        let meta = std::fs::symlink_metadata(&source)?;
        if meta.is_dir() {
            mirror(&source, &target)?;
        } else if meta.is_file() && meta.len() >= LINK_AT {
            std::os::unix::fs::symlink(&source, &target)
                .with_context(|| format!("linking {}", target.display()))?;
        } else if meta.is_file() {
            copy_with_time(&source, &target)?;
        }
    }
    Ok(())
}

/// Copies a file keeping its modification time (cargo compares them).
fn copy_with_time(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    let modified = std::fs::metadata(from)?.modified()?;
    std::fs::File::options()
        .write(true)
        .open(to)?
        .set_modified(modified)?;
    Ok(())
}

/// The shared cache's directory for an installation prefix.
pub fn dir_for_prefix(prefix: &Path) -> PathBuf {
    prefix.join("share/rustloop/cache")
}

/// Prepares `<dir>/<key>` for the installer's build (runtime sources, tokio's sources copied
/// out of the registry, the patch config) and locks its slot. Needs the network once.
pub fn prepare(dir: &Path) -> Result<Slot> {
    let base = dir.join(cache::key());
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    // A rebuild starts over: the manifest goes first, so no kernel uses a half-built cache.
    let _ = std::fs::remove_file(base.join(MANIFEST));
    let _ = std::fs::remove_dir_all(base.join(".cargo"));
    let runtime_dir = base.join("runtime");
    cache::write_runtime(&runtime_dir)?;
    let packages = vendor(&base, &runtime_dir)?;
    let mut config = String::from(
        "# Written by `rustloop install`: tokio and its dependencies as path dependencies in\n\
         # this shared cache, so their build products are fresh for every user (see\n\
         # src/engine/shared_cache.rs).\n[patch.crates-io]\n",
    );
    for (name, version, path) in &packages {
        let duplicate = packages.iter().filter(|(n, ..)| n == name).count() > 1;
        let key = if duplicate {
            format!("{name}-{}", version.replace('.', "_"))
        } else {
            name.clone()
        };
        config += &format!(
            "{} = {{ path = {}, package = {} }}\n",
            Value::from(key),
            Value::from(path.to_string_lossy().into_owned()),
            Value::from(name.as_str())
        );
    }
    std::fs::create_dir_all(base.join(".cargo"))?;
    std::fs::write(base.join(".cargo/config.toml"), config)?;
    cache::lock_dir(base.join("slot"), runtime_dir)
}

/// Resolves a cell's dependencies and copies every crates.io package into
/// `<base>/src/`; returns (name, version, directory) of each.
fn vendor(base: &Path, runtime_dir: &Path) -> Result<Vec<(String, String, PathBuf)>> {
    let scratch = base.join("resolve");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let mut manifest = String::from(
        "[package]\nname = \"rustloop-resolve\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\
         [lib]\npath = \"lib.rs\"\n[dependencies]\n",
    );
    for (name, spec) in cache::dependencies(runtime_dir) {
        manifest += &format!("{name} = {spec}\n");
    }
    std::fs::write(scratch.join("Cargo.toml"), manifest)?;
    std::fs::write(scratch.join("lib.rs"), "")?;
    // Every platform's packages (windows-sys is most of their 20 MB): resolving a cell's
    // dependencies offline needs each of them, and users have no registry index of their own.
    let output = std::process::Command::new("cargo")
        .args(["metadata", "--format-version", "1"])
        .current_dir(&scratch)
        .output()
        .context("cannot run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let mut packages = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let source = package["source"].as_str().unwrap_or_default();
        if !source.starts_with("registry+") && !source.starts_with("sparse+") {
            continue;
        }
        let (name, version) = (
            package["name"].as_str().unwrap_or_default(),
            package["version"].as_str().unwrap_or_default(),
        );
        let from = Path::new(package["manifest_path"].as_str().unwrap_or_default())
            .parent()
            .context("package without a directory")?;
        let to = base.join("src").join(format!("{name}-{version}"));
        if !to.exists() {
            std::fs::create_dir_all(base.join("src"))?;
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(from)
                .arg(&to)
                .status()?;
            if !status.success() {
                bail!("copying {} failed", from.display());
            }
        }
        packages.push((name.to_owned(), version.to_owned(), to));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    if !packages.iter().any(|(n, ..)| n == "tokio") {
        bail!("`cargo metadata` did not resolve tokio");
    }
    Ok(packages)
}

/// After the installer's build: drops the cells' own artifacts, makes everything readable by
/// all, and writes the manifest that makes the cache usable.
pub fn finish(dir: &Path) -> Result<PathBuf> {
    let base = dir.join(cache::key());
    let slot = base.join("slot");
    for name in [".evcxr-config", "src", ".rustloop-types.json", "fast-lane"] {
        let path = slot.join(name);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    // Incremental state is only read when cargo recompiles those crates, which it then does in
    // a user's own slot; it would be most of the cache's size.
    for profile in [
        slot.join("target/debug"),
        slot.join("target")
            .join(cache::toolchain()?.host)
            .join("debug"),
    ] {
        let _ = std::fs::remove_dir_all(profile.join("incremental"));
    }
    make_readable(&base)?;
    let manifest = json!({
        "rustloop": env!("CARGO_PKG_VERSION"),
        "key": cache::key(),
        "rustc": rustc_version()?,
    });
    std::fs::write(
        base.join(MANIFEST),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    make_readable(&base.join(MANIFEST))?;
    Ok(base)
}

/// `chmod -R a+rX`.
fn make_readable(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    let exec = if meta.is_dir() || mode & 0o100 != 0 {
        0o111
    } else {
        0
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o444 | exec))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            make_readable(&entry?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_links_large_files_copies_small_ones_and_skips_cell_artifacts() {
        let root = std::env::temp_dir().join(format!("rustloop-shared-{}", std::process::id()));
        let from = root.join("from");
        let deps = from.join("x86_64/debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        std::fs::create_dir_all(from.join("x86_64/debug/incremental/ctx-1")).unwrap();
        std::fs::write(deps.join("libtokio-1.rlib"), vec![0u8; LINK_AT as usize]).unwrap();
        std::fs::write(deps.join("tokio-1.d"), b"small").unwrap();
        std::fs::write(deps.join("libctx.so"), vec![0u8; LINK_AT as usize]).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        std::fs::File::options()
            .write(true)
            .open(deps.join("tokio-1.d"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        mirror(&from, &root.join("to")).unwrap();
        let to = root.join("to/x86_64/debug/deps");
        assert_eq!(
            std::fs::read_link(to.join("libtokio-1.rlib")).unwrap(),
            deps.join("libtokio-1.rlib")
        );
        let small = std::fs::symlink_metadata(to.join("tokio-1.d")).unwrap();
        assert!(small.is_file());
        assert_eq!(small.modified().unwrap(), old);
        assert!(!to.join("libctx.so").exists());
        assert!(!root.join("to/x86_64/debug/incremental").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_unset_variable_means_no_shared_cache() {
        // The variable is not set in unit tests (nothing else sets it in this process).
        if std::env::var_os(ENV).is_none() {
            assert!(matches!(find(), Ok(None)));
        }
    }
}
