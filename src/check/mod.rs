//! `keyrelay check`: every configured provider key against its provider,
//! before the server relies on it. The configuration is the server's own
//! (config file, `.env`, environment), the keys and their auth headers are
//! the pool's, and the calls go through the server's upstream client, so a
//! key that passes here is sent exactly as the proxy would send it.
//!
//! Each key gets its provider's cheapest keyed call (the model list), at
//! most `--concurrency` at once; the answer is classified as the proxy
//! classifies failures ([`keyrelay_layers::classify`]). Secrets never reach
//! the output: keys show as their ids, and providers' messages are
//! redacted.

mod probe;
mod progress;

use std::{io::Write, process::ExitCode, sync::Arc, time::Duration};

use futures_util::StreamExt;
use keyrelay_layers::{
    pool::{KeyEntry, KeyPool},
    provider::Provider,
    upstream::{ClientOptions, HttpsClient, build_client},
};

pub use self::probe::{KeyCheck, Verdict};
use self::{probe::probe, progress::Progress};
use crate::{
    cli::{CheckArgs, Cli},
    config::{self, Settings, Sources},
};

/// A configuration that cannot be loaded, as the server exits for it.
const EXIT_CONFIG: u8 = 64;

/// Runs `keyrelay check`: 0 when every key is usable, 1 otherwise (or with
/// no key at all), 64 when the configuration cannot be loaded.
#[expect(clippy::print_stderr, reason = "the command's failures are for the operator at the terminal")]
pub fn run(cli: &Cli, args: &CheckArgs) -> ExitCode {
    let settings = match config::load(Sources::from_cli(cli)) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("keyrelay check: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let checked = runtime.block_on(async {
        let keys = keys_of(&settings)?;
        if keys.is_empty() {
            return Err("no provider keys configured: set e.g. OPENAI_API_KEY_1 (see .env.example)".to_owned());
        }
        let client = build_client(&ClientOptions::default()).map_err(|err| format!("no HTTPS client: {err}"))?;
        let timeout = Duration::from_secs(args.timeout);
        Ok(check_all(&client, keys, usize::from(args.concurrency), timeout).await)
    });
    let checks = match checked {
        Ok(checks) => checks,
        Err(message) => {
            eprintln!("keyrelay check: {message}");
            return ExitCode::FAILURE;
        }
    };
    let text = if args.json {
        let mut json = serde_json::to_string_pretty(&checks).expect("checks always serialize");
        json.push('\n');
        json
    } else {
        table(&checks)
    };
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`| head`) changes nothing about the keys.
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    if checks.iter().all(|c| c.verdict == Verdict::Ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A key to check, with its provider.
type Target = (Arc<Provider>, Arc<KeyEntry>);

/// Every key of every provider, in configuration order, as the pool holds
/// it (ids, auth headers).
fn keys_of(settings: &Settings) -> Result<Vec<Target>, String> {
    let mut pool = KeyPool::builder();
    for p in &settings.providers {
        pool = pool.provider_keys(p.provider.clone(), p.options, p.keys.clone());
    }
    let pool = pool.build().map_err(|err| err.to_string())?;
    Ok(pool.providers().flat_map(|p| p.keys().iter().map(|key| (p.provider().clone(), key.clone()))).collect())
}

/// Checks `keys`, `concurrency` at a time, with a progress bar; the results
/// in the order of `keys`.
pub async fn check_all(
    client: &HttpsClient,
    keys: Vec<Target>,
    concurrency: usize,
    timeout: Duration,
) -> Vec<KeyCheck> {
    let mut progress = Progress::start(keys.len());
    let mut results: Vec<(usize, KeyCheck)> = Vec::with_capacity(keys.len());
    let mut running = futures_util::stream::iter(keys.into_iter().enumerate())
        .map(|(i, (provider, key))| async move { (i, probe(client, &provider, &key, timeout).await) })
        .buffer_unordered(concurrency.max(1));
    while let Some(done) = running.next().await {
        results.push(done);
        progress.tick();
    }
    progress.finish();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, check)| check).collect()
}

/// The checks as an aligned table, then a summary line.
pub fn table(checks: &[KeyCheck]) -> String {
    let mut lines = vec![["key", "provider", "verdict", "latency", "message"].map(str::to_owned)];
    for c in checks {
        lines.push([
            c.id.clone(),
            c.provider.clone(),
            c.verdict.label().to_owned(),
            format!("{} ms", c.latency_ms),
            c.message.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..5).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| if i == 3 { format!("{cell:>w$}") } else { format!("{cell:<w$}") })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let usable = checks.iter().filter(|c| c.verdict == Verdict::Ok).count();
    out.push_str(&format!("{usable} of {} keys usable\n", checks.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, verdict: Verdict, latency_ms: u64, message: &str) -> KeyCheck {
        KeyCheck {
            id: id.to_owned(),
            provider: id.split(':').next().unwrap().to_owned(),
            verdict,
            status: None,
            latency_ms,
            message: message.to_owned(),
        }
    }

    #[test]
    fn the_table_aligns_and_counts_the_usable_keys() {
        let checks = [
            check("openai:1a2b3c4d", Verdict::Ok, 85, ""),
            check("gemini:9f8e7d6c", Verdict::NoQuota, 1204, "You exceeded your current quota"),
        ];
        let expected = "\
key              provider  verdict   latency  message
openai:1a2b3c4d  openai    ok          85 ms
gemini:9f8e7d6c  gemini    no quota  1204 ms  You exceeded your current quota
1 of 2 keys usable
";
        assert_eq!(table(&checks), expected);
    }
}
