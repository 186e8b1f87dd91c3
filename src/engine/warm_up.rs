//! Starting evcxr: the evaluation process (this binary, with the link and library paths it
//! needs), the cell crate's build settings (opt-level 0, rustloop's rustc wrapper, tokio and
//! the runtime crate as dependencies of every cell), and evcxr's own output channels.

use super::Output;
use super::cache::{CELL_RUSTFLAGS, Slot, cell_dependencies};
use super::child::{LINK_ENV, RUNTIME_LIBRARY_ENV};
use super::router::Router;
use anyhow::{Context, Result};
use evcxr::{CommandContext, EvalContext};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Starts evcxr with our evaluation process and makes tokio and the runtime crate part of
/// every cell.
pub fn warm_up(
    slot: &Slot,
    link: &Path,
    router: &Arc<Router>,
    warnings_file: &Path,
    child: &Mutex<Option<Arc<Mutex<std::process::Child>>>>,
) -> Result<CommandContext> {
    let toolchain = super::cache::toolchain()?;
    crate::set_toolchain_version(&toolchain.release);
    let deps = slot
        .dir
        .join("target")
        .join(&toolchain.host)
        .join("debug")
        .join("deps");
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command.env(LINK_ENV, link);
    // evcxr moves each cell's library out of deps/, which breaks its relative RUNPATH; say
    // where libstd and the runtime library are.
    let mut library_path = std::ffi::OsString::from(&deps);
    library_path.push(":");
    library_path.push(&toolchain.target_libdir);
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH") {
        library_path.push(":");
        library_path.push(existing);
    }
    command.env("LD_LIBRARY_PATH", library_path);
    command.env(RUNTIME_LIBRARY_ENV, deps.join("librustloop.so"));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Die with the evaluator thread (the kernel), never linger as an orphan.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // Keep out of the kernel's process group: a SIGINT Jupyter sends the kernel's group
            // is turned into a cooperative interrupt instead of killing the evaluator.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let t0 = Instant::now();
    let (mut eval, outputs) = EvalContext::with_subprocess_command(command)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("starting evcxr")?;
    *child.lock().unwrap() = Some(eval.process_handle());
    forward_evcxr_outputs(router.clone(), outputs);

    let configure = |eval: &mut EvalContext, offline: bool| -> Result<()> {
        let mut state = eval.state();
        state.set_offline_mode(offline);
        // Cells compile at opt-level 0: fastest compiles; tokio is built the same way once.
        state
            .set_opt_level("0")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // `use rustloop as _;` stays in every cell evcxr compiles from now on: it makes each
        // cell link the runtime library, and with it the one shared tokio.
        state.set_build_env("RUSTFLAGS", CELL_RUSTFLAGS);
        // Run cell builds through this binary to keep the warnings evcxr would drop.
        if let Ok(exe) = std::env::current_exe() {
            state.set_build_env("RUSTC_WRAPPER", &exe.to_string_lossy());
            state.set_build_env(super::wrapper::WRAPPER_ENV, "1");
            state.set_build_env(
                super::wrapper::WARNINGS_FILE_ENV,
                &warnings_file.to_string_lossy(),
            );
        }
        // Later cells skip cargo when only their source changed (`wrapper::Direct`).
        super::wrapper::BuildJob::forget(warnings_file);
        state.set_direct_build(std::sync::Arc::new(super::wrapper::Direct {
            warnings_file: warnings_file.to_owned(),
        }));
        tracing::info!("warm-up: evcxr started after {:?}", t0.elapsed());
        let [(tokio, tokio_spec), _runtime] = cell_dependencies(slot);
        state
            .add_dep(&tokio, &tokio_spec)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        state
            .add_local_dep(&slot.runtime_dir.to_string_lossy())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!("warm-up: dependencies validated after {:?}", t0.elapsed());
        let outputs = eval
            .eval_with_state("use rustloop as _;", state)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!("warm-up phases: {:?}", outputs.phases);
        Ok(())
    };
    if slot.is_warm() {
        if let Err(e) = configure(&mut eval, true) {
            tracing::info!("offline warm-up failed ({e:#}); retrying online");
            configure(&mut eval, false)?;
        }
    } else {
        configure(&mut eval, false)?;
    }
    // Later `:dep` lines may need the network.
    let mut state = eval.state();
    state.set_offline_mode(false);
    eval.eval_with_state("", state)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Cells reach evcxr without top-level `let`s (the store keeps variables), so its
    // rust-analyzer pass over each cell's variables would find nothing; rust-analyzer then
    // loads only when a completion or hover asks (vendor/evcxr/RUSTLOOP-PATCH.md).
    eval.set_variable_analysis(false);
    Ok(CommandContext::with_eval_context(eval))
}

/// evcxr's own stdout/stderr channels carry what the evaluation process printed outside our
/// pipes (startup errors); show it rather than lose it.
fn forward_evcxr_outputs(router: Arc<Router>, outputs: evcxr::EvalContextOutputs) {
    for (receiver, stderr) in [(outputs.stdout, false), (outputs.stderr, true)] {
        let router = router.clone();
        std::thread::spawn(move || {
            for line in receiver {
                tracing::debug!(stderr, "evaluation process: {line}");
                router.emit(Output::Stream {
                    stderr,
                    text: format!("{line}\n"),
                });
            }
        });
    }
}
