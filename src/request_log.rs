//! Per-request log directories (`--enable-request-logging`): one directory
//! per finished request under `<data dir>/logs/requests/`, named
//! `<UTC time>_<request id>`, holding `request.json` (credential headers
//! redacted), `response.json` or `stream.sse` (the body as the client got
//! it) and `metadata.json` (attempts, usage, timing).
//!
//! The request path only hands the entry to a bounded queue
//! ([`RequestLogQueue`]); when it is full the entry is dropped and counted
//! in `keyrelay_request_log_dropped_total`, so a slow disk never slows a
//! request. One writer task ([`RequestLogWriter::run`]) empties the queue.

use std::{
    io,
    path::{Path, PathBuf},
};

use keyrelay_layers::log::{RequestLogEntry, RequestLogSink};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// How many finished requests may wait for the writer.
pub const QUEUE_CAPACITY: usize = 1024;

/// The request path's end of the queue: never waits.
#[derive(Clone, Debug)]
pub struct RequestLogQueue {
    tx: mpsc::Sender<RequestLogEntry>,
}

impl RequestLogSink for RequestLogQueue {
    fn record(&self, entry: RequestLogEntry) {
        if self.tx.try_send(entry).is_err() {
            metrics::counter!(keyrelay_layers::metrics::REQUEST_LOG_DROPPED).increment(1);
        }
    }
}

/// The writer's end: files under `dir` (`<data dir>/logs/requests`).
#[derive(Debug)]
pub struct RequestLogWriter {
    rx: mpsc::Receiver<RequestLogEntry>,
    dir: PathBuf,
}

/// A queue of `capacity` entries and the writer that empties it into
/// `data_dir/logs/requests`.
pub fn channel(data_dir: &Path, capacity: usize) -> (RequestLogQueue, RequestLogWriter) {
    let (tx, rx) = mpsc::channel(capacity);
    (RequestLogQueue { tx }, RequestLogWriter { rx, dir: data_dir.join("logs").join("requests") })
}

impl RequestLogWriter {
    /// Writes entries as they come until `stop` fires (or every queue end is
    /// gone), then writes what is still queued and returns.
    pub async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            tokio::select! {
                entry = self.rx.recv() => match entry {
                    Some(entry) => self.write_logged(&entry).await,
                    None => return,
                },
                _ = &mut stop => break,
            }
        }
        self.rx.close();
        while let Some(entry) = self.rx.recv().await {
            self.write_logged(&entry).await;
        }
    }

    async fn write_logged(&self, entry: &RequestLogEntry) {
        if let Err(err) = self.write(entry).await {
            tracing::warn!(dir = %self.dir.display(), request = entry.id.as_str(), error = %err, "cannot write the request log");
        }
    }

    /// Writes one entry's directory; returns it.
    pub async fn write(&self, entry: &RequestLogEntry) -> io::Result<PathBuf> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let base = format!("{}_{}", utc_stamp(entry.started_unix_ms), file_safe(&entry.id));
        let mut dir = self.dir.join(&base);
        let mut n = 1;
        loop {
            match tokio::fs::create_dir(&dir).await {
                Ok(()) => break,
                // The same client id twice in one millisecond.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && n < 100 => {
                    n += 1;
                    dir = self.dir.join(format!("{base}-{n}"));
                }
                Err(err) => return Err(err),
            }
        }
        let request = json!({
            "method": entry.method,
            "path": entry.path,
            "headers": pairs(&entry.request_headers),
            "body": body_value(&entry.request_body),
            "body_truncated": entry.request_body_truncated,
        });
        write_json(&dir.join("request.json"), &request).await?;
        if entry.event_stream {
            tokio::fs::write(dir.join("stream.sse"), &entry.response_body).await?;
        } else if entry.status.is_some() {
            let response = json!({
                "status": entry.status,
                "headers": pairs(&entry.response_headers),
                "body": body_value(&entry.response_body),
                "body_truncated": entry.response_body_truncated,
            });
            write_json(&dir.join("response.json"), &response).await?;
        }
        if let Some((upstream, truncated)) = &entry.upstream_body {
            // The provider's own bytes, where they differ from the client's.
            let name = if entry.event_stream { "upstream.sse" } else { "upstream.json" };
            tokio::fs::write(dir.join(name), upstream).await?;
            if *truncated {
                tokio::fs::write(dir.join("upstream.truncated"), b"").await?;
            }
        }
        let metadata = json!({
            "id": entry.id,
            "started": utc_stamp(entry.started_unix_ms),
            "started_unix_ms": entry.started_unix_ms,
            "method": entry.method,
            "path": entry.path,
            "provider": entry.provider,
            "model": entry.model,
            "status": entry.status,
            "outcome": entry.outcome,
            "stream": entry.event_stream,
            "response_headers": pairs(&entry.response_headers),
            "response_body_truncated": entry.response_body_truncated,
            "attempts": entry.attempts.iter().map(|a| json!({
                "key": a.key,
                "outcome": a.outcome,
                "status": a.status,
                "ms": a.ms,
            })).collect::<Vec<_>>(),
            "tokens": entry.tokens.map(|(prompt, completion)| json!({"prompt": prompt, "completion": completion})),
            "headers_after_ms": entry.headers_after_ms,
            "duration_ms": entry.duration_ms,
        });
        write_json(&dir.join("metadata.json"), &metadata).await?;
        Ok(dir)
    }
}

async fn write_json(path: &Path, value: &Value) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    tokio::fs::write(path, bytes).await
}

fn pairs(headers: &[(String, String)]) -> Value {
    Value::Array(headers.iter().map(|(name, value)| json!([name, value])).collect())
}

/// The body as JSON when it parses, else as (lossy) text.
fn body_value(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// `20261121T233700.123Z` for milliseconds since the Unix epoch.
pub fn utc_stamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, unix_ms % 1000)
}

/// A request id as a file name part: `[A-Za-z0-9._-]` kept, anything else
/// `_`, never `.` or `..` alone, at most 128 bytes.
pub fn file_safe(id: &str) -> String {
    let safe: String = id
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    if safe.is_empty() || safe.chars().all(|c| c == '.') { safe.replace('.', "_") + "_" } else { safe }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000.000Z");
        assert_eq!(utc_stamp(951_782_400_000), "20000229T000000.000Z");
        assert_eq!(utc_stamp(1_795_304_220_123), "20261121T233700.123Z");
        assert_eq!(utc_stamp(4_102_444_799_999), "20991231T235959.999Z");
    }

    #[test]
    fn ids_become_safe_file_names() {
        assert_eq!(file_safe("abc-123_x.y"), "abc-123_x.y");
        assert_eq!(file_safe("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(file_safe("a b/c\\d:é"), "a_b_c_d__");
        assert_eq!(file_safe(".."), "___");
        assert_eq!(file_safe(""), "_");
        assert_eq!(file_safe(&"x".repeat(300)).len(), 128);
    }

    #[test]
    fn bodies_are_json_when_they_parse() {
        assert_eq!(body_value(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(body_value(b"not json"), json!("not json"));
        assert_eq!(body_value(b""), Value::Null);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let dir = tempfile::tempdir().unwrap();
        let (queue, mut writer) = channel(dir.path(), 1);
        metrics::with_local_recorder(&recorder, || {
            for id in ["one", "two", "three"] {
                let mut entry = RequestLogEntry::default();
                entry.id = id.to_owned();
                queue.record(entry);
            }
        });
        let rendered = handle.render();
        assert!(
            rendered.lines().any(|l| l == "keyrelay_request_log_dropped_total 2"),
            "two dropped entries counted: {rendered}"
        );
        assert_eq!(writer.rx.recv().await.map(|e| e.id), Some("one".to_owned()));
        assert!(writer.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn the_writer_drains_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (queue, writer) = channel(dir.path(), 8);
        for id in ["a/1", "a/1"] {
            let mut entry = RequestLogEntry::default();
            entry.id = id.to_owned();
            entry.started_unix_ms = 1_795_304_220_123;
            entry.status = Some(200);
            entry.request_body = bytes::Bytes::from_static(br#"{"model":"m"}"#);
            queue.record(entry);
        }
        let (stop, stopped) = oneshot::channel();
        stop.send(()).unwrap();
        writer.run(stopped).await;
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("logs/requests"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["20261121T233700.123Z_a_1", "20261121T233700.123Z_a_1-2"]);
        let request: Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("logs/requests/20261121T233700.123Z_a_1/request.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(request["body"], json!({"model": "m"}));
        drop(queue);
    }
}
