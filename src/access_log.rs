//! The completion line of every request, written by keyrelay itself rather
//! than by `tracing-subscriber`'s formatter: the same fields in the same
//! layout (text or JSON), for a fraction of the cost. The line is built in
//! a buffer of its own and written to stderr in one call, as the
//! formatter does; the `tracing` filter (`--log-level`, `RUST_LOG`) still
//! decides whether it is written.

use std::{
    cell::RefCell,
    fmt::Write as _,
    io::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use keyrelay_layers::log::{AccessLog, AttemptsTrail, Completion};

use crate::cli::LogFormat;

/// Writes completion lines to stderr.
#[derive(Clone, Copy, Debug)]
pub struct StderrAccessLog {
    format: LogFormat,
}

impl StderrAccessLog {
    pub fn new(format: LogFormat) -> Self {
        Self { format }
    }
}

thread_local! {
    // One line's buffer per thread, reused: no allocation per request.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl AccessLog for StderrAccessLog {
    fn write(&self, line: &Completion<'_>) {
        LINE.with_borrow_mut(|buf| {
            buf.clear();
            let _ = match self.format {
                LogFormat::Text => text(buf, line, SystemTime::now()),
                LogFormat::Json => json(buf, line, SystemTime::now()),
            };
            buf.push('\n');
            // As tracing-subscriber's writer does: a failed log write is
            // nobody's error.
            let _ = std::io::stderr().write_all(buf.as_bytes());
        });
    }
}

/// `2026-12-06T05:10:00.123456Z  INFO request{id=.. method=POST path=/v1/..}: request finished status=200 ...`,
/// as tracing-subscriber's fmt layer writes the event without colours.
/// Written piece by piece (no `format_args!` machinery): this runs once per
/// request, and the formatter's generic path cost more than the routing.
pub fn text(out: &mut String, line: &Completion<'_>, now: SystemTime) -> std::fmt::Result {
    timestamp(out, now)?;
    out.push_str(match line.level {
        tracing::Level::DEBUG => " DEBUG request{id=",
        _ => "  INFO request{id=",
    });
    out.push_str(line.id);
    out.push_str(" method=");
    out.push_str(line.method.as_str());
    out.push_str(" path=");
    out.push_str(line.path);
    out.push_str("}: request finished");
    if let Some(status) = line.status {
        number(out, " status=", status.into());
    }
    if let Some(provider) = line.provider {
        out.push_str(" provider=");
        out.push_str(provider);
    }
    if let Some(model) = line.model {
        write!(out, " model={model:?}")?;
    }
    if let Some(key) = line.key() {
        out.push_str(" key=");
        out.push_str(key);
    }
    if !line.attempts.is_empty() {
        write!(out, " attempts={:?}", AttemptsTrail(line.attempts))?;
    }
    if let Some(tokens) = line.tokens {
        number(out, " tokens_in=", tokens.prompt_tokens);
        number(out, " tokens_out=", tokens.completion_tokens);
    }
    if let Some(code) = line.code {
        // Codes and outcomes are lowercase words: quoted as Debug would.
        out.push_str(" code=\"");
        out.push_str(code);
        out.push('"');
    }
    out.push_str(" outcome=\"");
    out.push_str(line.outcome);
    out.push('"');
    if let Some(ms) = line.headers_after_ms {
        number(out, " headers_after_ms=", ms);
    }
    number(out, " duration_ms=", line.duration_ms);
    Ok(())
}

/// ` name=1234`.
fn number(out: &mut String, name: &str, value: u64) {
    out.push_str(name);
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// One JSON object, as tracing-subscriber's JSON layer writes the event
/// with its current span.
pub fn json(out: &mut String, line: &Completion<'_>, now: SystemTime) -> std::fmt::Result {
    out.push_str("{\"timestamp\":\"");
    timestamp(out, now)?;
    write!(out, "\",\"level\":\"{}\",\"fields\":{{\"message\":\"request finished\"", line.level)?;
    if let Some(status) = line.status {
        write!(out, ",\"status\":{status}")?;
    }
    let string = |out: &mut String, name: &str, value: &str| {
        let value = serde_json::Value::from(value);
        write!(out, ",\"{name}\":{value}")
    };
    if let Some(provider) = line.provider {
        string(out, "provider", provider)?;
    }
    if let Some(model) = line.model {
        string(out, "model", model)?;
    }
    if let Some(key) = line.key() {
        string(out, "key", key)?;
    }
    if !line.attempts.is_empty() {
        let trail = format!("{:?}", AttemptsTrail(line.attempts));
        string(out, "attempts", trail.trim_matches('"'))?;
    }
    if let Some(tokens) = line.tokens {
        write!(out, ",\"tokens_in\":{},\"tokens_out\":{}", tokens.prompt_tokens, tokens.completion_tokens)?;
    }
    if let Some(code) = line.code {
        string(out, "code", code)?;
    }
    string(out, "outcome", line.outcome)?;
    if let Some(ms) = line.headers_after_ms {
        write!(out, ",\"headers_after_ms\":{ms}")?;
    }
    write!(out, ",\"duration_ms\":{}}},\"span\":{{", line.duration_ms)?;
    // The id is printable ASCII without spaces, but may hold a quote.
    out.push_str("\"id\":");
    write!(out, "{}", serde_json::Value::from(line.id))?;
    write!(
        out,
        ",\"method\":\"{}\",\"path\":{},\"name\":\"request\"}}}}",
        line.method,
        serde_json::Value::from(line.path)
    )
}

/// RFC 3339 in UTC with microseconds, as tracing-subscriber's default timer.
/// The date and time up to the second are formatted once per second.
fn timestamp(out: &mut String, now: SystemTime) -> std::fmt::Result {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let (days, rest) = (secs / 86_400, secs % 86_400);
            let (year, month, day) = civil_from_days(days as i64);
            text.clear();
            let (hour, minute, second) = (rest / 3600, rest % 3600 / 60, rest % 60);
            write!(text, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.")?;
            *cached = secs;
        }
        out.push_str(text);
        Ok::<_, std::fmt::Error>(())
    })?;
    let micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut rest = micros;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
    out.push('Z');
    Ok(())
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use http::Method;
    use keyrelay_layers::{
        log::RequestLogLayer,
        provider::ProviderId,
        record::{AttemptRecord, RequestRecord},
        usage::Usage,
    };

    use super::*;

    /// What tracing-subscriber's fmt layer writes (no time, no colours).
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn attempts() -> Vec<AttemptRecord> {
        vec![
            AttemptRecord::new("openai:0e1ec0f0", "rate_limit", Some(429), 12),
            AttemptRecord::new("openai:5e6f7a8b", "success", Some(200), 310),
        ]
    }

    fn completion(attempts: &[AttemptRecord]) -> Completion<'_> {
        let mut line = Completion::new(tracing::Level::INFO, "r-1", &Method::POST, "/v1/chat/completions");
        line.status = Some(200);
        line.provider = Some("openai");
        line.model = Some("gpt-4o \"mini\"");
        line.attempts = attempts;
        line.tokens = Some(Usage::new(12, 5));
        line.code = None;
        line.outcome = "completed";
        line.headers_after_ms = Some(3);
        line.duration_ms = 9;
        line
    }

    /// Lines an access log wrote, through [`text`] at the Unix epoch.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);

    impl AccessLog for Lines {
        fn write(&self, line: &Completion<'_>) {
            let mut out = String::new();
            text(&mut out, line, UNIX_EPOCH).unwrap();
            self.0.lock().unwrap().push(out);
        }
    }

    /// One request through `log`, whose inner service records what Parse,
    /// RetryRotate and the usage meter would; a paused clock keeps the
    /// durations at 0.
    async fn one_request(log: RequestLogLayer) {
        use tower::{Layer, ServiceExt};
        let svc = log.layer(tower::service_fn(|req: http::Request<_>| async move {
            let record = req.extensions().get::<RequestRecord>().unwrap();
            record.set_route(ProviderId::new("openai"), "gpt-4o \"mini\"".into(), "other".into());
            attempts().into_iter().for_each(|a| record.push_attempt(a));
            record.set_usage(Usage::new(12, 5));
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
        }));
        let req = http::Request::post("/v1/chat/completions").header("x-request-id", "r-1").body(()).unwrap();
        drop(svc.oneshot(req).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_text_line_is_what_the_fmt_layer_writes_for_the_library_s_own_event() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .without_time()
            .with_ansi(false)
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        one_request(RequestLogLayer::new()).await;
        let lines = Arc::new(Lines::default());
        one_request(RequestLogLayer::new().with_access_log(lines.clone())).await;

        let fmt = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let ours = lines.0.lock().unwrap().clone();
        let [ours] = ours.as_slice() else { panic!("one line: {ours:?}") };
        let ours = ours.strip_prefix("1970-01-01T00:00:00.000000Z ").unwrap();
        assert_eq!(format!("{ours}\n"), fmt, "the access log and the fmt layer agree");
        assert!(fmt.contains(" key=openai:5e6f7a8b attempts=\"openai:0e1ec0f0 rate_limit 12ms, "), "{fmt}");
    }

    #[test]
    fn the_json_line_is_one_object_with_the_fields_and_the_span() {
        let attempts = attempts();
        let mut out = String::new();
        json(&mut out, &completion(&attempts), UNIX_EPOCH + Duration::from_micros(1_500_001)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["timestamp"], "1970-01-01T00:00:01.500001Z");
        assert_eq!(value["level"], "INFO");
        let fields = &value["fields"];
        assert_eq!(fields["message"], "request finished");
        assert_eq!((fields["status"].as_u64(), fields["tokens_in"].as_u64()), (Some(200), Some(12)));
        assert_eq!(fields["model"], "gpt-4o \"mini\"");
        assert_eq!(fields["key"], "openai:5e6f7a8b");
        assert_eq!(fields["attempts"], "openai:0e1ec0f0 rate_limit 12ms, openai:5e6f7a8b success 310ms");
        assert_eq!(value["span"]["path"], "/v1/chat/completions");
        assert_eq!(value["span"]["name"], "request");
    }

    #[test]
    fn dates_match_the_calendar() {
        for (secs, expected) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, "2000-02-29T00:00:00.000000Z"),
            (1_796_530_199, "2026-12-06T04:09:59.000000Z"),
            (4_107_542_400, "2100-03-01T00:00:00.000000Z"),
        ] {
            let mut out = String::new();
            timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
            assert_eq!(out, expected, "{secs}");
        }
    }
}
