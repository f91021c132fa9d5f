//! `SseFramer`: any split of a stream gives the same events.
//!
//! Input: byte 0 says how many of the next bytes are chunk sizes (`b0 % 8`,
//! each size `% 64`, 0 meaning an empty chunk); the rest is the stream. The
//! events of the split stream must equal those of the stream pushed whole,
//! and of the stream pushed a byte at a time. Each event, encoded again by
//! `sse::encode_event` (which the OpenAI usage filter uses to pass events
//! on), must frame back to itself.
#![no_main]

use keyrelay_fuzz::{chunks, frame};
use keyrelay_layers::upstream::dialect::{SseFramer, sse::encode_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else { return };
    let count = usize::from(count % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(count);

    let whole = frame(&[stream]);
    let split = frame(&chunks(stream, sizes));
    assert_eq!(split, whole, "split by {sizes:?}");
    if stream.len() <= 512 {
        let bytewise = frame(&chunks(stream, &[1]));
        assert_eq!(bytewise, whole, "split byte by byte");
    }

    for event in &whole {
        // The framer drops one `\r` before each `\n`; a line that ends in
        // another `\r` cannot survive encoding (SSE would read it as a line end).
        let lines_end_in_cr = event.data.split('\n').chain(event.event.as_deref()).any(|line| line.ends_with('\r'));
        if lines_end_in_cr {
            continue;
        }
        let encoded = encode_event(event);
        let mut framer = SseFramer::new();
        let mut again = framer.push(&encoded);
        again.extend(framer.finish());
        assert_eq!(again, [event.clone()], "encoded as {:?}", String::from_utf8_lossy(&encoded));
    }
});
