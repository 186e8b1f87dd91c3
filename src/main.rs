//! rustloop: a Jupyter kernel for async Rust.
//!
//! One binary, three roles: the kernel Jupyter starts (`rustloop kernel`), the installer
//! (`rustloop install`), and, when evcxr starts it, the evaluation process that runs compiled
//! cells (see `engine::run_if_evaluation_process`). Layers: `wire` (Jupyter protocol over
//! ZeroMQ), `kernel` (request handling), `engine` (evaluation with evcxr).

mod engine;
mod install;
mod kernel;
mod limits;
mod watchdog;
mod wire;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Parser)]
#[command(name = "rustloop", version, about = "A Jupyter kernel for async Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the kernel (this is what Jupyter starts).
    Kernel {
        /// The connection file Jupyter wrote.
        #[arg(long, short = 'f')]
        connection_file: PathBuf,
        /// Largest message a client (or the evaluation process) may send, in bytes or with a
        /// K/M/G suffix; a peer that sends more is disconnected. Default 256M, or
        /// $RUSTLOOP_MAX_MESSAGE_SIZE.
        #[arg(long, value_name = "SIZE")]
        max_message_size: Option<String>,
        /// Largest single frame (at most the message size). Default: the message size, or
        /// $RUSTLOOP_MAX_FRAME_SIZE.
        #[arg(long, value_name = "SIZE")]
        max_frame_size: Option<String>,
    },
    /// Install the kernelspec so Jupyter offers "Rust (rustloop)", and pre-build the cache.
    Install(InstallArgs),
}

#[derive(Args)]
struct InstallArgs {
    /// Install for the current user (default).
    #[arg(long, conflicts_with_all = ["sys_prefix", "prefix"])]
    user: bool,
    /// Install into the active Python environment (sys.prefix).
    #[arg(long, conflicts_with = "prefix")]
    sys_prefix: bool,
    /// Install under PREFIX/share/jupyter/kernels.
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<PathBuf>,
    /// Skip compiling tokio and the runtime now (the first notebook then takes about a
    /// minute longer to start).
    #[arg(long)]
    no_prebuild: bool,
}

static TOOLCHAIN_RELEASE: OnceLock<String> = OnceLock::new();

/// The rustc release cells are compiled with (for `language_info.version`); empty until the
/// evaluator has asked rustc.
pub fn toolchain_version() -> &'static str {
    TOOLCHAIN_RELEASE.get().map(String::as_str).unwrap_or("")
}

/// Records the rustc release once the evaluator knows it.
pub fn set_toolchain_version(release: &str) {
    let _ = TOOLCHAIN_RELEASE.set(release.to_owned());
}

fn main() {
    // When evcxr starts this binary as its evaluation process, or cargo as its rustc wrapper,
    // that role takes over here and never returns.
    watchdog::run_if_watchdog();
    engine::run_if_evaluation_process();
    engine::run_if_rustc_wrapper();
    evcxr::runtime_hook();

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, as for every other rustloop error; `--help` has the details.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "rustloop: {} (see `rustloop --help`)",
                first.trim_start_matches("error: ")
            );
            std::process::exit(2);
        }
    };
    init_logging();
    let result = match cli.command {
        Command::Kernel {
            connection_file,
            max_message_size,
            max_frame_size,
        } => limits::configure(max_message_size.as_deref(), max_frame_size.as_deref())
            .map_err(anyhow::Error::msg)
            .and_then(|_| run_kernel(connection_file)),
        Command::Install(args) => run_install(args),
    };
    if let Err(e) = result {
        eprintln!("rustloop: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUSTLOOP_LOG")
        // zeromq's decoder warns when it refuses an oversized frame (see vendor/zeromq).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rustloop=warn,zeromq::codec=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Locks a cache slot (seeded from the installation's shared cache if there is one) and
/// points evcxr at it.
fn prepare_engine() -> Result<engine::cache::Slot> {
    configure_engine(engine::shared_cache::acquire()?)
}

/// Points evcxr at a locked slot. Runs before any other thread exists, so setting the
/// environment is sound.
fn configure_engine(slot: engine::cache::Slot) -> Result<engine::cache::Slot> {
    // Our own evcxr.toml, so a user's global one cannot move the build directory or change
    // its flags, and so that evcxr's very first (probe) compile already uses our settings.
    let config_dir = slot.dir.join(".evcxr-config");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(
        config_dir.join("evcxr.toml"),
        format!(
            "[evcxr]\nopt_level = \"0\"\npreserve_vars_on_panic = true\noffline_mode = {}\n",
            slot.is_warm()
        ),
    )?;
    // SAFETY: single-threaded at this point (the tokio runtime is not started yet).
    unsafe {
        std::env::set_var("EVCXR_TMPDIR", &slot.dir);
        std::env::set_var("EVCXR_CONFIG_DIR", &config_dir);
    }
    Ok(slot)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("rustloop-kernel")
        .build()
        .context("starting the tokio runtime")
}

fn run_kernel(connection_file: PathBuf) -> Result<()> {
    let connection = wire::ConnectionFile::read(&connection_file)?;
    // Before any thread exists: every process the kernel starts from now on dies with it.
    watchdog::start();
    let slot = prepare_engine()?;
    runtime()?.block_on(kernel::run(connection, slot))
}

fn run_install(args: InstallArgs) -> Result<()> {
    let location = match (args.sys_prefix, args.prefix) {
        (true, _) => install::Location::SysPrefix,
        (false, Some(prefix)) => install::Location::Prefix(prefix),
        (false, None) => install::Location::User,
    };
    let _ = args.user; // the default
    let executable = std::env::current_exe().context("cannot locate this executable")?;
    // A system-wide install builds the shared cache every user's kernel starts from.
    let shared = match install::prefix(&location)? {
        Some(prefix) if !args.no_prebuild => Some(engine::shared_cache::dir_for_prefix(&prefix)),
        _ => None,
    };
    let env: Vec<(&str, &std::path::Path)> = shared
        .iter()
        .map(|dir| (engine::shared_cache::ENV, dir.as_path()))
        .collect();
    let dir = install::write_kernelspec(&location, &executable, &env)?;
    println!(
        "Installed kernelspec {} in {}",
        install::KERNEL_NAME,
        dir.display()
    );
    if args.no_prebuild {
        return Ok(());
    }
    let started = std::time::Instant::now();
    if let Some(shared) = shared {
        println!(
            "Pre-building tokio and the rustloop runtime into the shared cache {} ...",
            shared.display()
        );
        let slot = configure_engine(engine::shared_cache::prepare(&shared)?)?;
        runtime()?.block_on(engine::prebuild(slot))?;
        let base = engine::shared_cache::finish(&shared)?;
        println!(
            "Shared cache ready in {:.1} s: {} (every user's kernel starts from it).",
            started.elapsed().as_secs_f64(),
            base.display()
        );
    } else {
        println!("Pre-building tokio and the rustloop runtime (once per toolchain)...");
        let slot = prepare_engine()?;
        runtime()?.block_on(engine::prebuild(slot))?;
        println!("Cache ready in {:.1} s.", started.elapsed().as_secs_f64());
    }
    Ok(())
}
