//! Helpers shared by the per-layer tests: pools and requests, a scriptable
//! response body, a bounded await, and a tracing capture.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    cell::RefCell,
    collections::BTreeMap,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body::{Body, Frame};
use keyrelay_layers::{
    BoxError,
    error::ErrorReply,
    extensions::{Endpoint, RouteTarget},
    pool::{KeyId, KeyPool, Secret, Selection},
    provider::{Provider, ProviderId},
};
use tokio::sync::mpsc;
use tracing::{
    Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{layer::SubscriberExt, registry::LookupSpan};

/// A base URL nothing listens on; layers below Upstream never dial it.
pub const NOWHERE: &str = "http://127.0.0.1:9/v1";

pub fn openai(api_base: &str) -> Provider {
    Provider::openai_compatible("openai", api_base).unwrap()
}

/// One `openai` provider at `api_base` with the given keys.
pub fn pool_at(api_base: &str, selection: Selection, keys: &[&str]) -> Arc<KeyPool> {
    KeyPool::builder().provider(openai(api_base), selection, secrets(keys)).build().unwrap()
}

/// One `openai` provider (never dialled) with the given keys.
pub fn pool(selection: Selection, keys: &[&str]) -> Arc<KeyPool> {
    pool_at(NOWHERE, selection, keys)
}

pub fn secrets(keys: &[&str]) -> Vec<Secret> {
    keys.iter().map(|&k| Secret::new(k)).collect()
}

/// The public id of `openai`'s key `secret`.
pub fn key_id(provider: &str, secret: &str) -> KeyId {
    KeyId::new(&ProviderId::new(provider), &Secret::new(secret))
}

/// In-flight counts of a provider's keys, in configuration order.
pub fn in_flight(pool: &KeyPool, provider: &str) -> Vec<u32> {
    let pool = pool.provider(provider).unwrap();
    pool.keys().iter().map(|k| k.in_flight()).collect()
}

/// Requests so far per key of a provider, in configuration order.
pub fn requests(pool: &KeyPool, provider: &str) -> Vec<u64> {
    let pool = pool.provider(provider).unwrap();
    pool.keys().iter().map(|k| k.requests()).collect()
}

/// `openai/gpt-4o` on chat completions.
pub fn target(stream: bool) -> RouteTarget {
    RouteTarget::new(ProviderId::new("openai"), "gpt-4o", Endpoint::ChatCompletions, stream)
}

/// A request as Parse would hand it on: `RouteTarget` already inserted.
pub fn routed<B>(body: B) -> Request<B> {
    let mut req = Request::post("/v1/chat/completions").body(body).unwrap();
    req.extensions_mut().insert(target(false));
    req
}

/// 2026-01-01 12:00:00 UTC in Unix seconds: the wall time that pools built
/// with [`noon`] stand at, so that daily resets fall at known instants.
pub const NOON_UNIX: u64 = 1_767_268_800;

/// [`NOON_UNIX`] as a `SystemTime`, for `KeyPoolBuilder::wall_clock`.
pub fn noon() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOON_UNIX)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the client would be told about `err`.
pub fn reply(err: &BoxError) -> ErrorReply {
    ErrorReply::from_error(&**err)
}

/// Awaits `fut`, failing the test instead of hanging when a bug never
/// completes it. Not a timing assert: healthy runs finish in milliseconds.
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("no progress within 10 s: the code under test is stuck")
}

/// [`within`] for paused-clock tests, whose futures legitimately wait for
/// minutes of tokio's time: under a paused clock a stuck future still fails
/// at once, as the clock jumps to the bound when nothing else can run.
pub async fn within_virtual<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(48 * 3600), fut)
        .await
        .expect("no progress within 48 h of tokio's time: the code under test is stuck")
}

// === MockBody ===

type Item = Result<Frame<Bytes>, BoxError>;

/// A response or request body scripted from the test, one frame at a time,
/// through a channel. It ends when its [`BodyTx`] is dropped (or never, while
/// the sender lives), so end-of-stream is only known from a `None`, the way
/// a chunked body behaves. It counts how often it was polled.
#[derive(Debug)]
pub struct MockBody {
    rx: mpsc::UnboundedReceiver<Item>,
    polls: Arc<AtomicUsize>,
}

/// Feeds a [`MockBody`].
#[derive(Clone, Debug)]
pub struct BodyTx {
    tx: mpsc::UnboundedSender<Item>,
}

impl BodyTx {
    pub fn data(&self, chunk: impl Into<Bytes>) {
        let _ = self.tx.send(Ok(Frame::data(chunk.into())));
    }
    pub fn error(&self, message: &'static str) {
        let _ = self.tx.send(Err(message.into()));
    }
    pub fn trailers(&self, trailers: HeaderMap) {
        let _ = self.tx.send(Ok(Frame::trailers(trailers)));
    }
    /// Ends the body (after what was already sent is read).
    pub fn end(self) {}
}

impl MockBody {
    pub fn channel() -> (BodyTx, Self) {
        let (tx, rx) = mpsc::unbounded_channel();
        let body = Self { rx, polls: Arc::default() };
        (BodyTx { tx }, body)
    }

    /// A body of these items that then ends.
    pub fn script(items: Vec<Result<&'static str, &'static str>>) -> Self {
        let (tx, body) = Self::channel();
        for item in items {
            match item {
                Ok(chunk) => tx.data(chunk),
                Err(message) => tx.error(message),
            }
        }
        body
    }

    /// Shares the poll counter, to check whether a layer read the body.
    pub fn polls(&self) -> Arc<AtomicUsize> {
        self.polls.clone()
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        self.polls.fetch_add(1, SeqCst);
        self.rx.poll_recv(cx)
    }
}

pub fn polled(polls: &AtomicUsize) -> usize {
    polls.load(SeqCst)
}

// === tracing capture ===

/// Field values as text: strings without quotes, the rest as `Debug`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields(pub BTreeMap<String, String>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

/// One event as the test sees it.
#[derive(Clone, Debug)]
pub struct Event {
    pub level: tracing::Level,
    /// The event's own fields, `message` included.
    pub fields: Fields,
    /// The fields of the spans it happened in, outermost first, merged.
    pub spans: Fields,
}

impl Event {
    pub fn message(&self) -> &str {
        self.fields.get("message").unwrap_or_default()
    }
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name)
    }
}

/// Events seen by [`capture`] on this thread.
#[derive(Clone, Debug, Default)]
pub struct Captured(Arc<Mutex<Vec<Event>>>);

impl Captured {
    pub fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    /// The events whose message is `message`.
    pub fn named(&self, message: &str) -> Vec<Event> {
        self.all().into_iter().filter(|e| e.message() == message).collect()
    }
}

thread_local! {
    /// Where this thread's events go, while a [`capture`] guard lives.
    static CAPTURING: RefCell<Option<Captured>> = const { RefCell::new(None) };
}

/// Stops capturing on this thread when dropped.
#[derive(Debug)]
pub struct CaptureGuard {
    _private: (),
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

struct CaptureLayer;

impl<S> tracing_subscriber::Layer<S> for CaptureLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(captured) = CAPTURING.with(|c| c.borrow().clone()) else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut spans = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    spans.0.extend(f.0.clone());
                }
            }
        }
        captured.0.lock().unwrap().push(Event { level: *event.metadata().level(), fields, spans });
    }
}

/// Installs the process-wide capturing subscriber, once. Every test of a
/// binary that captures must call this (or [`capture`]) before it emits
/// anything.
///
/// A process-wide default rather than a thread-local `set_default`: tracing
/// caches each callsite's interest globally, and a callsite first hit on a
/// thread without a subscriber is cached as "never", which made events of
/// the tests running beside it vanish at random. `Once` makes every test
/// wait until the subscriber is in place, so no callsite is registered
/// before it.
pub fn trace_init() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(CaptureLayer))
            .expect("no other global subscriber in the layer tests");
    });
}

/// Records every event emitted on the current thread until the guard drops.
/// The tests run on tokio's current-thread runtime, so everything they poll
/// runs on this thread.
pub fn capture() -> (Captured, CaptureGuard) {
    trace_init();
    let captured = Captured::default();
    CAPTURING.with(|c| *c.borrow_mut() = Some(captured.clone()));
    (captured, CaptureGuard { _private: () })
}
