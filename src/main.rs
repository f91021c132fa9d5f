use std::{io::Write, process::ExitCode, sync::Arc};

use clap::Parser;
use keyrelay::{
    Bound, banner,
    cli::{Cli, Command},
    config::{self, Sources},
    server::{Shutdown, shutdown_signal},
    telemetry,
};

/// Exit status for a configuration that cannot run (BSD's EX_USAGE).
const EXIT_CONFIG: u8 = 64;

/// One core (as `taskset`, a container's CPU limit or `TOKIO_WORKER_THREADS=1`
/// allows) gets tokio's single-threaded runtime: a one-worker multi-thread
/// runtime pays for work-stealing it cannot use, about a quarter of the
/// CPU per request in benches/load. More cores get the multi-thread one,
/// sized by tokio (`TOKIO_WORKER_THREADS` or the cores available).
///
/// The commands besides serving build what they need themselves:
/// `keyrelay usage` reads the database and needs no runtime; `check` and
/// `status` run a small one of their own.
fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Usage(args)) => return keyrelay::usage::command::run(&cli, args),
        Some(Command::Check(args)) => return keyrelay::check::run(&cli, args),
        Some(Command::Status(args)) => return keyrelay::status_cli::run(&cli, args),
        None => {}
    }
    let workers = std::env::var("TOKIO_WORKER_THREADS").ok().and_then(|n| n.trim().parse::<usize>().ok());
    let cores = workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    runtime.expect("a tokio runtime").block_on(run(cli))
}

#[expect(clippy::print_stderr, reason = "start-up failures happen before logging exists, and must reach the operator")]
async fn run(cli: Cli) -> ExitCode {
    let settings = match config::load(Sources::from_cli(&cli)) {
        Ok(mut settings) => {
            settings.apply_cli_tls(&cli);
            settings
        }
        Err(err) => {
            eprintln!("keyrelay: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(cli.log_level.as_deref(), cli.log_format);

    // Listening for signals before anything is printed: a SIGTERM right
    // after the banner must still end in a clean exit.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            eprintln!("keyrelay: cannot listen for shutdown signals: {err}");
            return ExitCode::FAILURE;
        }
    };
    let loader: keyrelay::reload::SettingsLoader = Arc::new(move || {
        let mut settings = config::load(Sources::from_cli(&cli))?;
        settings.apply_cli_tls(&cli);
        Ok(settings)
    });
    let bound = match Bound::bind(&settings).await {
        Ok(bound) => bound.reload_with(&settings, loader),
        Err(err) => {
            eprintln!("keyrelay: {err}");
            return ExitCode::FAILURE;
        }
    };
    let addr = bound.local_addr().expect("a bound listener has an address");
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{}", banner(addr, &settings, &bound));
    let _ = stdout.flush();
    drop(stdout);

    match bound.serve(shutdown).await {
        Shutdown::Drained => tracing::info!("all requests finished; bye"),
        Shutdown::GraceExpired => {
            tracing::warn!("grace period over; closing the remaining connections")
        }
    }
    ExitCode::SUCCESS
}
