//! [`CoalescedBody`]: data frames that arrive together leave together.
//!
//! A provider sends a stream as one chunk per SSE event, and the HTTP/1
//! client hands the body over one chunk at a time, waking its connection task
//! for each. Forwarded as they come, the server side writes each chunk with
//! its own `writev`, and a 22-event answer that arrived in one TCP read leaves
//! in 22 writes, each waking the client. Here a data frame is held while the
//! body has more ready: it gives the connection task one turn of the
//! scheduler to hand over what it already has, and only when a turn brings
//! nothing new does the batch go out, as one frame.
//!
//! A stream whose events arrive apart (a model writing token by token) pays
//! one scheduler turn per event, microseconds, and no system call.
//!
//! ```
//! use bytes::Bytes;
//! use futures_util::stream;
//! use http_body::Frame;
//! use http_body_util::{BodyExt, StreamBody};
//! use keyrelay_layers::body::CoalescedBody;
//!
//! # tokio_test::block_on(async {
//! let events = ["data: {\"n\":1}\n\n", "data: {\"n\":2}\n\n", "data: [DONE]\n\n"];
//! let upstream = StreamBody::new(stream::iter(events.map(|e| Ok::<_, std::io::Error>(Frame::data(Bytes::from(e))))));
//! let mut body = CoalescedBody::new(upstream);
//!
//! let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
//! assert_eq!(frame, events.concat(), "three ready events leave as one frame");
//! assert!(body.frame().await.is_none());
//! # });
//! ```

use std::{
    future::Future,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// A batch stops growing here: a large body still streams in pieces.
pub const MAX_BATCH_BYTES: usize = 64 * 1024;

pin_project! {
    /// A body that merges data frames ready one after another into one frame.
    /// Trailers, errors and the end pass through in order, after the data
    /// before them.
    pub struct CoalescedBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        // The batch: one frame as it came, or several copied together.
        first: Option<Bytes>,
        merged: BytesMut,
        // The scheduler turn the batch waits out, once started; reused
        // while the scheduler holds no copy of its waker.
        turn: Option<Arc<Turn>>,
        waiting: bool,
        // A batch completed by `poll_prefetch`, returned first.
        prefetched: Option<Option<Result<Frame<Bytes>, B::Error>>>,
        // What ended the batch (trailers, an error, the end), returned on
        // the poll after the batch.
        after: Option<Option<Result<Frame<Bytes>, B::Error>>>,
    }
}

impl<B: Body> CoalescedBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self { inner, first: None, merged: BytesMut::new(), turn: None, waiting: false, prefetched: None, after: None }
    }
}

impl<B> CoalescedBody<B>
where
    B: Body<Data = Bytes>,
{
    /// Completes the first batch now when its first frame is here already,
    /// so that a server writes it together with the response head; returns
    /// at once when nothing has arrived yet. It only waits out the turns a
    /// batch in hand takes, never for the provider.
    pub fn poll_prefetch(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.prefetched.is_some() {
            return Poll::Ready(());
        }
        match self.as_mut().poll_frame(cx) {
            Poll::Ready(batch) => {
                *self.project().prefetched = Some(batch);
                Poll::Ready(())
            }
            Poll::Pending if self.first.is_some() => Poll::Pending,
            Poll::Pending => Poll::Ready(()),
        }
    }

    /// The batch [`poll_prefetch`](Self::poll_prefetch) completed, when it
    /// is the whole body: the inner body ended with it, as it said (hyper's
    /// body does once a `Content-Length` is all here) or by ending within
    /// the batch's turn (a chunked body's last chunk read with it). `None`
    /// when more may follow, or nothing was prefetched.
    pub fn prefetched_whole(&self) -> Option<&Bytes> {
        let Some(Some(Ok(frame))) = &self.prefetched else { return None };
        let data = frame.data_ref()?;
        let ended = match &self.after {
            Some(end) => end.is_none(),
            None => self.first.is_none() && self.inner.is_end_stream(),
        };
        ended.then_some(data)
    }
}

impl<B: Body> std::fmt::Debug for CoalescedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescedBody").field("buffered", &self.first.is_some()).finish_non_exhaustive()
    }
}

impl<B> Body for CoalescedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if let Some(batch) = this.prefetched.take() {
            return Poll::Ready(batch);
        }
        if let Some(after) = this.after.take() {
            return Poll::Ready(after);
        }
        loop {
            let held = this.first.is_some();
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        *this.waiting = false;
                        match this.first.as_mut() {
                            None => *this.first = Some(data),
                            Some(first) => {
                                if this.merged.is_empty() {
                                    this.merged.reserve(first.len() + data.len());
                                    this.merged.extend_from_slice(first);
                                }
                                this.merged.extend_from_slice(&data);
                            }
                        }
                        if batch_len(this.first, this.merged) >= MAX_BATCH_BYTES {
                            return Poll::Ready(Some(Ok(Frame::data(take_batch(this.first, this.merged)))));
                        }
                    }
                    Err(other) if held => {
                        *this.after = Some(Some(Ok(other)));
                        return Poll::Ready(Some(Ok(Frame::data(take_batch(this.first, this.merged)))));
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Poll::Ready(end) if held => {
                    *this.after = Some(end);
                    return Poll::Ready(Some(Ok(Frame::data(take_batch(this.first, this.merged)))));
                }
                Poll::Ready(end) => return Poll::Ready(end),
                Poll::Pending if !held => return Poll::Pending,
                Poll::Pending if !*this.waiting => {
                    // One turn for the connection task to hand over what it
                    // has read already: tokio's yield wakes this task only
                    // once the tasks already woken have run.
                    *this.waiting = true;
                    let waker = Waker::from(Turn::start(this.turn, cx.waker()));
                    let _ = pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
                    return Poll::Pending;
                }
                // A server may poll twice in one turn (hyper does): only the
                // turn's own wake-up ends the wait.
                Poll::Pending if !this.turn.as_ref().is_some_and(|turn| turn.over.load(Ordering::Acquire)) => {
                    return Poll::Pending;
                }
                Poll::Pending => {
                    *this.waiting = false;
                    return Poll::Ready(Some(Ok(Frame::data(take_batch(this.first, this.merged)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.prefetched {
            Some(None) => return true,
            Some(Some(_)) => return false,
            None => {}
        }
        // A server may stop polling a body that says it is done, so after
        // the last batch this must say so, as the inner body did.
        self.first.is_none()
            && match &self.after {
                Some(end) => end.is_none(),
                None => self.inner.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        let prefetched = match &self.prefetched {
            Some(None) => return SizeHint::with_exact(0),
            Some(Some(Ok(frame))) => frame.data_ref().map_or(0, Bytes::len),
            _ => 0,
        };
        let held = (batch_len(&self.first, &self.merged) + prefetched) as u64;
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

/// A scheduler turn: its waker marks it over, then wakes the task.
#[derive(Debug)]
struct Turn {
    over: AtomicBool,
    task: Waker,
}

impl Turn {
    /// A turn for the task behind `task`, reusing `slot`'s when no one else
    /// holds it.
    fn start(slot: &mut Option<Arc<Turn>>, task: &Waker) -> Arc<Turn> {
        match slot.as_mut().and_then(Arc::get_mut) {
            Some(turn) => {
                *turn.over.get_mut() = false;
                if !turn.task.will_wake(task) {
                    turn.task = task.clone();
                }
            }
            None => *slot = Some(Arc::new(Turn { over: AtomicBool::new(false), task: task.clone() })),
        }
        slot.clone().expect("set above")
    }
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.over.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

fn batch_len(first: &Option<Bytes>, merged: &BytesMut) -> usize {
    if merged.is_empty() { first.as_ref().map_or(0, Bytes::len) } else { merged.len() }
}

fn take_batch(first: &mut Option<Bytes>, merged: &mut BytesMut) -> Bytes {
    let first = first.take().unwrap_or_default();
    if merged.is_empty() { first } else { merged.split().freeze() }
}
