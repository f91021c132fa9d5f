//! An incremental server-sent-events framer: bytes in, whole events out.
//! It keeps only the unfinished tail between pushes, so any split of the
//! stream (even inside a UTF-8 character or a `\r\n`) gives the same events.
//!
//! ```
//! use keyrelay_layers::upstream::dialect::sse::{encode_event, SseEvent, SseFramer};
//!
//! let mut framer = SseFramer::new();
//! assert!(framer.push(b"event: ping\r\nda").is_empty(), "nothing is whole yet");
//! let events = framer.push(b"ta: {}\r\n\r\n: a comment\n\ndata: [DO");
//! assert_eq!(events, [SseEvent { event: Some("ping".into()), data: "{}".into() }]);
//! assert!(framer.push(b"NE]\n").is_empty(), "no blank line yet");
//! assert_eq!(framer.finish().unwrap().data, "[DONE]", "the stream's end completes the last event");
//!
//! assert_eq!(&encode_event(&events[0])[..], b"event: ping\ndata: {}\n\n");
//! ```

use bytes::{Buf, Bytes, BytesMut};

/// One event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when the event has one.
    pub event: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// Splits a byte stream into [`SseEvent`]s.
#[derive(Debug, Default)]
pub struct SseFramer {
    buf: BytesMut,
    /// How much of `buf` is known to hold no line end: a line split over
    /// many small chunks is scanned once, not once per chunk.
    scanned: usize,
    event: Option<String>,
    /// The data lines so far, joined by `\n`.
    data: String,
    has_data: bool,
}

impl SseFramer {
    /// A framer at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether no part of an event is held: the next byte starts a new one.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && !self.has_data && self.event.is_none()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(offset) = memchr::memchr(b'\n', &self.buf[self.scanned..]) {
            let end = self.scanned + offset;
            self.scanned = 0;
            let line = self.buf.split_to(end + 1);
            let mut line = &line[..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line(line, &mut events);
        }
        self.scanned = self.buf.len();
        // A lone `\r` line ending at the very end waits for its `\n` (or
        // the next chunk); SSE also allows bare `\r`, which providers do not send.
        events
    }

    /// The stream ended: an event without its blank line still counts.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            self.scanned = 0;
            let rest = std::mem::take(&mut self.buf);
            let mut events = Vec::new();
            let line = rest.chunk();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.line(line, &mut events);
        }
        self.dispatch()
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            events.extend(self.dispatch());
            return;
        }
        if line[0] == b':' {
            return; // a comment
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            _ => {} // id, retry: not needed by the proxy
        }
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        let data = std::mem::take(&mut self.data);
        Some(SseEvent { event, data })
    }
}

/// One `data: ...` event as bytes.
pub fn data_event(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out.freeze()
}

/// An event as bytes again: its `event:` name if any, and one `data:` line
/// per line of its data.
pub fn encode_event(event: &SseEvent) -> Bytes {
    let mut out = BytesMut::with_capacity(event.data.len() + 16);
    if let Some(name) = &event.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in event.data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

/// The end of an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn all(stream: &[u8], split: usize) -> Vec<SseEvent> {
        let mut framer = SseFramer::new();
        let mut out = Vec::new();
        for chunk in stream.chunks(split.max(1)) {
            out.extend(framer.push(chunk));
        }
        out.extend(framer.finish());
        out
    }

    const STREAM: &[u8] = b"event: message_start\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\nevent: ping\ndata: {}\n\n\
data: first line\ndata: second \xc3\xa9\n\nid: 7\nretry: 100\n\ndata:no-space\n\ndata: tail without blank line";

    #[test]
    fn frames_events_whatever_the_split() {
        let whole = all(STREAM, STREAM.len());
        assert_eq!(
            whole,
            [
                SseEvent { event: Some("message_start".into()), data: "{\"a\":1}".into() },
                SseEvent { event: Some("ping".into()), data: "{}".into() },
                SseEvent { event: None, data: "first line\nsecond é".into() },
                SseEvent { event: None, data: "no-space".into() },
                SseEvent { event: None, data: "tail without blank line".into() },
            ]
        );
        for split in 1..STREAM.len() {
            assert_eq!(all(STREAM, split), whole, "split every {split} bytes");
        }
    }

    #[test]
    fn keeps_only_the_unfinished_tail() {
        let mut framer = SseFramer::new();
        assert!(framer.push(b"data: {\"x\":").is_empty());
        assert_eq!(framer.push(b"1}\n\n")[0].data, "{\"x\":1}");
        assert!(framer.buf.is_empty());
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn data_events_are_openai_framed() {
        assert_eq!(&data_event(b"{}")[..], b"data: {}\n\n");
    }

    #[test]
    fn encoded_events_frame_back_to_themselves() {
        let event = SseEvent { event: Some("delta".into()), data: "line one\nline two".into() };
        let bytes = encode_event(&event);
        assert_eq!(&bytes[..], b"event: delta\ndata: line one\ndata: line two\n\n");
        assert_eq!(SseFramer::new().push(&bytes), [event]);
    }
}
