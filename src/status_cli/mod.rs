//! `keyrelay status`: a running keyrelay's pool (`GET /v1/keys`) as a
//! table in the terminal. On a terminal it refreshes in place until `q`
//! ([`live`]); piped or redirected, it prints the table once. A refused
//! key or a server out of reach is a clear error and exit status 1; the
//! key itself is never printed.

mod fetch;
mod live;
mod table;

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use keyrelay_layers::upstream::{ClientOptions, build_client};

use self::fetch::Source;
use crate::{
    cli::{Cli, StatusArgs},
    config::{self, Sources},
};

/// Runs `keyrelay status`: 0 once the operator quits (or the table is
/// printed), 1 when the pool cannot be read.
#[expect(clippy::print_stderr, reason = "the command's failures are for the operator at the terminal")]
pub fn run(cli: &Cli, args: &StatusArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let source = runtime.block_on(async {
        let client = build_client(&ClientOptions::default()).map_err(|err| format!("no HTTP client: {err}"))?;
        Source::new(client, &args.url, args.key.clone().or_else(|| configured_key(cli)))
    });
    let first = source.as_ref().map_err(String::clone).and_then(|source| runtime.block_on(source.fetch()));
    let (source, view) = match (source, first) {
        (Ok(source), Ok(view)) => (source, view),
        (Err(message), _) | (_, Err(message)) => {
            eprintln!("keyrelay status: {message}");
            return ExitCode::FAILURE;
        }
    };
    if std::io::stdout().is_terminal() {
        return match live::run(&runtime, &source, view, Duration::from_secs(args.interval)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("keyrelay status: the terminal failed: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let mut text = table::render(&view, source.url(), Duration::ZERO).join("\n");
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) is not the pool's failure.
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    ExitCode::SUCCESS
}

/// The proxy key, else the admin key, of the configuration the server
/// would load (config file, `.env`, environment); none when it cannot be
/// loaded, and then the server says whether it wants one.
fn configured_key(cli: &Cli) -> Option<String> {
    let settings = config::load(Sources::from_cli(cli)).ok()?;
    settings.proxy_key.or(settings.admin_key).map(|key| key.expose().to_owned())
}
