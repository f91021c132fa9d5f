//! The pool as text: a heading, then one aligned row per key. Countdowns
//! are the server's `remaining_secs` less the time since the read, so a
//! live table ticks between reads without trusting this machine's clock.

use std::time::Duration;

use super::fetch::{KeyRow, PoolView};

const HEADER: [&str; 10] =
    ["provider", "key", "state", "cooldown", "in flight", "requests", "ok", "failed", "tokens in", "tokens out"];
/// Columns from here on are numbers, aligned right.
const FIRST_NUMBER: usize = 4;

/// The heading and the table of `view`, read `since_read` ago from `url`.
pub fn render(view: &PoolView, url: &str, since_read: Duration) -> Vec<String> {
    let mut lines = vec![heading(view, url)];
    if view.data.is_empty() {
        lines.push("no provider keys configured".to_owned());
        return lines;
    }
    let mut rows = vec![HEADER.map(str::to_owned)];
    rows.extend(view.data.iter().map(|key| row(key, since_read)));
    let widths: Vec<usize> =
        (0..HEADER.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| if i >= FIRST_NUMBER { format!("{cell:>w$}") } else { format!("{cell:<w$}") })
            .collect();
        lines.push(cells.join("  ").trim_end().to_owned());
    }
    lines
}

/// `keyrelay at URL: 3 keys (2 ok, 1 cooling); today's counters of the pool`.
fn heading(view: &PoolView, url: &str) -> String {
    let mut states: Vec<(&str, usize)> = Vec::new();
    for key in &view.data {
        match states.iter_mut().find(|(s, _)| *s == key.state) {
            Some((_, n)) => *n += 1,
            None => states.push((&key.state, 1)),
        }
    }
    let states: Vec<String> = states.iter().map(|(state, n)| format!("{n} {state}")).collect();
    let scope = match view.counters.as_str() {
        "pool" => "today's counters of every replica",
        _ => "today's counters of this replica",
    };
    let count = view.data.len();
    let plural = if count == 1 { "" } else { "s" };
    format!("keyrelay at {url}: {count} key{plural} ({}); {scope}", states.join(", "))
}

fn row(key: &KeyRow, since_read: Duration) -> [String; 10] {
    let t = &key.today;
    [
        key.provider.clone(),
        key.id.clone(),
        key.state.clone(),
        cooldown(key, since_read),
        key.in_flight.to_string(),
        t.requests.to_string(),
        t.successes.to_string(),
        t.failures().to_string(),
        t.tokens_in.to_string(),
        t.tokens_out.to_string(),
    ]
}

/// The soonest cooldown still running: `42s gpt-4o-mini`, and `+N` for
/// the other models cooling; `-` for none.
fn cooldown(key: &KeyRow, since_read: Duration) -> String {
    let left = |secs: u64| secs.saturating_sub(since_read.as_secs());
    let mut running: Vec<(u64, &str)> =
        key.cooldowns.iter().map(|c| (left(c.remaining_secs), c.model.as_str())).filter(|(s, _)| *s > 0).collect();
    running.sort();
    match running.as_slice() {
        [] => "-".to_owned(),
        [(secs, model)] => format!("{} {model}", countdown(*secs)),
        [(secs, model), rest @ ..] => format!("{} {model} +{}", countdown(*secs), rest.len()),
    }
}

/// `42s`, `3m05s`, `2h07m`.
pub fn countdown(secs: u64) -> String {
    match secs {
        0..100 => format!("{secs}s"),
        100..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyrelay_layers::pool::Counters;

    use crate::status_cli::fetch::Cooldown;

    fn key(id: &str, state: &str, cooldowns: &[(&str, u64)]) -> KeyRow {
        KeyRow {
            id: id.to_owned(),
            provider: id.split(':').next().unwrap().to_owned(),
            state: state.to_owned(),
            in_flight: 1,
            cooldowns: cooldowns
                .iter()
                .map(|&(model, remaining_secs)| Cooldown { model: model.to_owned(), remaining_secs })
                .collect(),
            today: {
                let mut today = Counters::default();
                (today.requests, today.successes, today.failures_rate_limit, today.tokens_in) = (12, 10, 2, 1500);
                today
            },
        }
    }

    #[test]
    fn the_table_shows_the_soonest_cooldown_counting_down() {
        let view = PoolView {
            data: vec![
                key("openai:1a2b3c4d", "ok", &[]),
                key("openai:5e6f7a8b", "cooling", &[("gpt-4o", 300), ("gpt-4o-mini", 42)]),
            ],
            counters: "replica".to_owned(),
        };
        let expected = [
            "keyrelay at http://127.0.0.1:8000: 2 keys (1 ok, 1 cooling); today's counters of this replica",
            "provider  key              state    cooldown            in flight  requests  ok  failed  tokens in  tokens out",
            "openai    openai:1a2b3c4d  ok       -                           1        12  10       2       1500           0",
            "openai    openai:5e6f7a8b  cooling  40s gpt-4o-mini +1          1        12  10       2       1500           0",
        ];
        assert_eq!(render(&view, "http://127.0.0.1:8000", Duration::from_millis(2500)), expected);
        let later = render(&view, "http://127.0.0.1:8000", Duration::from_secs(50));
        assert!(later[3].contains(" 4m10s gpt-4o "), "{}", later[3]);
    }

    #[test]
    fn countdowns_read_at_a_glance() {
        assert_eq!(countdown(7), "7s");
        assert_eq!(countdown(185), "3m05s");
        assert_eq!(countdown(7620), "2h07m");
    }
}
