//! What keyrelay asked of Redis during one run, read from Redis itself:
//! `MONITOR` (every command as Redis executed it, with its caller: a
//! client's address, or `lua` for a command a script ran) and
//! `INFO stats` (socket reads). A marker (`ECHO`) sent after the run tells
//! where the run's commands end in the monitor's stream.

use std::collections::BTreeMap;

use redis::{Script, aio::MultiplexedConnection};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::mpsc,
};

/// keyrelay's three shared-limits scripts, by the SHA1 its `EVALSHA`s name.
pub struct Scripts {
    admit: String,
    release: String,
    renew: String,
}

impl Scripts {
    pub fn new() -> Self {
        let sha = |text: &str| Script::new(text).get_hash().to_owned();
        Self {
            admit: sha(include_str!("../../src/shared/lua/admit.lua")),
            release: sha(include_str!("../../src/shared/lua/release.lua")),
            renew: sha(include_str!("../../src/shared/lua/renew.lua")),
        }
    }

    fn name(&self, sha: &str) -> &'static str {
        match sha {
            s if s == self.admit => "admit",
            s if s == self.release => "release",
            s if s == self.renew => "renew",
            _ => "other",
        }
    }
}

/// One command as `MONITOR` shows it: `+<time> [<db> <caller>] "cmd" "arg"...`.
pub struct Seen {
    /// Seconds, as Redis stamped it.
    pub at: f64,
    /// `127.0.0.1:PORT`, or `lua` inside a script.
    pub caller: String,
    /// Lower-cased command name.
    pub command: String,
    /// The rest of the line, quoted and escaped as Redis prints it.
    pub args: String,
}

impl Seen {
    fn parse(line: &str) -> Option<Self> {
        let line = line.strip_prefix('+')?;
        let (at, rest) = line.split_once(" [")?;
        let (bracket, rest) = rest.split_once("] ")?;
        let caller = bracket.split_once(' ')?.1.to_owned();
        let rest = rest.strip_prefix('"')?;
        let (command, args) = rest.split_once('"')?;
        Some(Self { at: at.parse().ok()?, caller, command: command.to_ascii_lowercase(), args: args.to_owned() })
    }

    /// The first argument, unquoted (a script's SHA1, `load`...).
    fn first_arg(&self) -> &str {
        self.args.trim_start().strip_prefix('"').and_then(|a| a.split('"').next()).unwrap_or_default()
    }

    fn is_script_internal(&self) -> bool {
        self.caller == "lua"
    }
}

/// A `MONITOR` connection, read by a task into a channel.
/// Dropped, the connection closes and Redis stops feeding it.
pub struct Monitor {
    lines: mpsc::UnboundedReceiver<String>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Monitor {
    pub async fn start(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to redis for MONITOR");
        stream.write_all(b"MONITOR\r\n").await.expect("send MONITOR");
        let (tx, lines) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut reader = BufReader::new(stream).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut monitor = Self { lines, reader };
        // MONITOR answers +OK before any command.
        monitor.lines.recv().await.expect("MONITOR's +OK");
        monitor
    }

    /// Everything executed until `ECHO <marker>` (sent by the caller after
    /// its run), dropping what came before `ECHO <start>`.
    pub async fn until(&mut self, start: &str, marker: &str) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut started = false;
        while let Some(line) = self.lines.recv().await {
            let Some(command) = Seen::parse(&line) else { continue };
            if command.command == "echo" {
                if command.first_arg() == start {
                    started = true;
                } else if command.first_arg() == marker {
                    return seen;
                }
                continue;
            }
            if started {
                seen.push(command);
            }
        }
        panic!("the MONITOR connection ended before the marker {marker}")
    }
}

/// What one run cost Redis, counted from the monitor's lines.
#[derive(Default)]
pub struct Tally {
    /// Commands clients sent (top level), by name (scripts by their name).
    pub sent: BTreeMap<String, u64>,
    /// Commands scripts ran inside Redis.
    pub in_scripts: u64,
    /// `PUBLISH` calls (clients' and scripts'), by the message's kind.
    pub published: BTreeMap<String, u64>,
    /// Counter writes: the pipelines of HSET/EXPIRE or PING the replicas
    /// send once a second, grouped by caller and time.
    pub counter_ticks: u64,
}

impl Tally {
    pub fn of(seen: &[Seen], scripts: &Scripts) -> Self {
        let mut tally = Self::default();
        let mut last_counter_write: BTreeMap<&str, f64> = BTreeMap::new();
        for command in seen {
            if command.command == "publish" {
                *tally.published.entry(kind_of(&command.args)).or_default() += 1;
            }
            if command.is_script_internal() {
                tally.in_scripts += 1;
                continue;
            }
            let name = match command.command.as_str() {
                "evalsha" => format!("evalsha:{}", scripts.name(command.first_arg())),
                "script" => {
                    format!("script-{}:{}", command.first_arg().to_ascii_lowercase(), script_named(&command.args))
                }
                other => other.to_owned(),
            };
            if COUNTER_WRITES.contains(&name.as_str()) && name != "expire" {
                // One tick's HSETs arrive together; a new tick is a second later.
                let last = last_counter_write.entry(&command.caller).or_insert(f64::MIN);
                if command.at - *last > 0.5 {
                    tally.counter_ticks += 1;
                }
                *last = command.at;
            }
            *tally.sent.entry(name).or_default() += 1;
        }
        tally
    }

    pub fn sent(&self, name: &str) -> u64 {
        self.sent.get(name).copied().unwrap_or(0)
    }

    /// Commands sent, the counter writes (time-driven, not per request)
    /// left out.
    pub fn sent_for_requests(&self) -> u64 {
        self.sent.iter().filter(|(name, _)| !COUNTER_WRITES.contains(&name.as_str())).map(|(_, calls)| calls).sum()
    }

    pub fn total_published(&self) -> u64 {
        self.published.values().sum()
    }
}

/// What the day counters' writer sends: `HSET` and `EXPIRE` per key that
/// changed, or a `PING`, once a second per replica.
const COUNTER_WRITES: [&str; 3] = ["hset", "expire", "ping"];

/// The `kind` of a keyrelay message, as it shows in MONITOR's escaped
/// JSON (`\"kind\":\"cooled\"`).
fn kind_of(args: &str) -> String {
    let marker = "\\\"kind\\\":\\\"";
    args.split_once(marker)
        .and_then(|(_, rest)| rest.split_once("\\\""))
        .map_or_else(|| "?".to_owned(), |(kind, _)| kind.to_owned())
}

/// Which script a `SCRIPT LOAD` carries, by its first comment.
fn script_named(args: &str) -> &'static str {
    match args {
        a if a.contains("-- Admits one attempt") => "admit",
        a if a.contains("-- Ends an admitted attempt") => "release",
        a if a.contains("-- Extends a running attempt") => "renew",
        _ => "other",
    }
}

/// `INFO stats`' `total_reads_processed`: socket reads Redis served, about
/// one per round trip (a pipeline usually arrives in one read).
pub async fn reads_processed(conn: &mut MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await.expect("INFO stats");
    info.lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}

/// `PUBSUB NUMSUB <channel>`: how many connections each message reaches.
pub async fn subscribers(conn: &mut MultiplexedConnection, channel: &str) -> u64 {
    let answer: (String, u64) =
        redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(conn).await.expect("PUBSUB NUMSUB");
    answer.1
}

/// `ECHO <marker>`, for [`Monitor::until`].
pub async fn mark(conn: &mut MultiplexedConnection, marker: &str) {
    let _: String = redis::cmd("ECHO").arg(marker).query_async(conn).await.expect("ECHO");
}
