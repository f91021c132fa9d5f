//! How the mock answers one request: the route's default answer, or an
//! injected fault. The same scripts work for every dialect; the error
//! bodies in each provider's own words are built in [`super::openai`]
//! (as constructors on [`Script`], e.g. [`Script::rate_limited`]),
//! [`super::anthropic`] and [`super::gemini`].

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::{Semaphore, watch};

use super::Recorded;

/// In a scripted body, replaced by the pool key the request carried: a
/// provider that echoes the key it was sent.
pub const KEY_PLACEHOLDER: &str = "{key}";

/// Holds a scripted stream until opened. Cloning shares the gate; opening
/// it releases every stream waiting on it, now or later.
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    pub fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub(super) async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|open| *open).await;
    }
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

/// Holds requests ([`Script::Hold`]) and lets them go a given number at a
/// time, or all at once. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Valve(Arc<Semaphore>);

impl Valve {
    pub fn new() -> Self {
        Self(Arc::new(Semaphore::new(0)))
    }

    /// Lets `n` more held requests (present or future) through.
    pub fn release(&self, n: usize) {
        self.0.add_permits(n);
    }

    /// Lets every held request through, now and later.
    pub fn open(&self) {
        self.0.close();
    }

    pub(super) async fn pass(&self) {
        // Closed means open: the error is the way through.
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
    }
}

impl Default for Valve {
    fn default() -> Self {
        Self::new()
    }
}

/// What a gated stream does once its gate opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Send the remaining events and end cleanly.
    Finish,
    /// Abort the response mid-body: the connection is cut. hyper may drop
    /// frames it has not flushed yet, so break only after the client has
    /// read the events it should see (open the gate then).
    Break,
}

/// How the mock answers one request.
#[derive(Clone, Debug)]
pub enum Script {
    /// The default answer (see the module docs of [`super`]).
    Ok,
    /// This status, these extra headers and these exact body bytes
    /// (`Content-Type: application/json`); [`KEY_PLACEHOLDER`] in the body
    /// becomes the key the request carried.
    Respond { status: u16, headers: Vec<(String, String)>, body: Bytes },
    /// Never answer (the request is still recorded).
    Hang,
    /// Answer `200` with the first bytes of a JSON body, then never send
    /// the rest (the connection stays open).
    Stall { prefix: Bytes },
    /// Close the connection without answering (FIN).
    Close,
    /// Reset the connection without answering (RST: the socket is closed
    /// with a zero linger).
    Reset,
    /// Stream the dialect's default events (OpenAI's chat fixture ending in
    /// `data: [DONE]`, Anthropic's and Gemini's text streams): `before`
    /// events at once, then wait for `gate`, then [`Then`].
    Stream { before: usize, gate: Gate, then: Then },
    /// `200 text/event-stream` with these events (each already framed), one
    /// frame each; with a gate, the first `before` events go out, then the
    /// stream waits for the gate, then sends the rest.
    Events { events: Vec<String>, gate: Option<(usize, Gate)> },
    /// A `200` that breaks after `k` events: a stream sends `k` events,
    /// pauses briefly so they are flushed, then cuts the connection. A
    /// route that answers whole gets the first half of its JSON body
    /// instead, then the cut.
    BreakAfter(usize),
    /// Wait until the valve lets this request through, then the default
    /// answer.
    Hold(Valve),
    /// Wait until the valve lets this request through, then answer as the
    /// inner script says (labelled as the inner script).
    HoldThen(Valve, Box<Script>),
    /// Take this long, then the default answer: a slow provider, so that
    /// requests overlap (counted in flight all along).
    Slow(Duration),
}

/// Picks the answer for each request with one key; see
/// [`super::MockUpstream::faults_for`].
pub type FaultFn = Arc<dyn Fn(&Recorded) -> Script + Send + Sync>;

impl Script {
    pub fn respond(status: u16, body: impl Into<Bytes>) -> Self {
        Self::Respond { status, headers: Vec::new(), body: body.into() }
    }

    /// [`Script::respond`] with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Self::Respond { headers, .. } = &mut self {
            headers.push((name.to_owned(), value.to_owned()));
        }
        self
    }

    /// One event, then wait for `gate`, then the rest.
    pub fn gated_stream(gate: &Gate) -> Self {
        Self::Stream { before: 1, gate: gate.clone(), then: Then::Finish }
    }

    /// A stream of these events.
    pub fn events(events: Vec<String>) -> Self {
        Self::Events { events, gate: None }
    }

    /// A stream that sends `before` of these events, waits for `gate`, then
    /// sends the rest.
    pub fn gated_events(events: Vec<String>, before: usize, gate: &Gate) -> Self {
        Self::Events { events, gate: Some((before, gate.clone())) }
    }

    /// `200` with the first half of `whole`, then nothing more.
    pub fn stalled_half_way(whole: &str) -> Self {
        Self::Stall { prefix: Bytes::copy_from_slice(&whole.as_bytes()[..whole.len() / 2]) }
    }

    /// A short name of the answer, as [`Recorded::answer`] shows it:
    /// `ok`, `status:429`, `hang`, `stall`, `close`, `reset`, `stream`,
    /// `events`, `break:K`, `hold` (a [`Script::HoldThen`] by its inner
    /// script), `slow`. A request the mock refused is labelled `refused`.
    pub fn label(&self) -> String {
        match self {
            Self::Ok => "ok".to_owned(),
            Self::Respond { status, .. } => format!("status:{status}"),
            Self::Hang => "hang".to_owned(),
            Self::Stall { .. } => "stall".to_owned(),
            Self::Close => "close".to_owned(),
            Self::Reset => "reset".to_owned(),
            Self::Stream { .. } => "stream".to_owned(),
            Self::Events { .. } => "events".to_owned(),
            Self::BreakAfter(k) => format!("break:{k}"),
            Self::Hold(_) => "hold".to_owned(),
            Self::HoldThen(_, then) => then.label(),
            Self::Slow(_) => "slow".to_owned(),
        }
    }
}
