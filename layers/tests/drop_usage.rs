//! `upstream::drop_usage_chunk`: the usage chunk keyrelay asked for on the
//! client's behalf never reaches the client, whatever the framing, and
//! frames without it pass untouched.

use std::convert::Infallible;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use keyrelay_layers::upstream::drop_usage_chunk;

const CONTENT: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n";
const FINISH: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n";
const USAGE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

async fn frames_out(frames: Vec<Bytes>) -> Vec<Bytes> {
    let body =
        StreamBody::new(futures_util::stream::iter(frames.into_iter().map(|f| Ok::<_, Infallible>(Frame::data(f)))));
    let mut body = std::pin::pin!(drop_usage_chunk(body));
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        out.push(frame.unwrap().into_data().unwrap());
    }
    out
}

#[tokio::test]
async fn frames_of_whole_events_without_usage_pass_as_they_came() {
    let frames: Vec<Bytes> = [CONTENT, FINISH, DONE].map(|s| Bytes::from_static(s.as_bytes())).to_vec();
    let out = frames_out(frames.clone()).await;
    assert_eq!(out, frames);
    // The very same buffers: nothing was copied or re-encoded.
    assert!(out.iter().zip(&frames).all(|(o, f)| o.as_ptr() == f.as_ptr()));
}

#[tokio::test]
async fn the_usage_chunk_is_dropped_at_every_split() {
    let whole = format!("{CONTENT}{FINISH}{USAGE}{DONE}");
    let expected = format!("{CONTENT}{FINISH}{DONE}");
    for size in [1, 2, 7, 64, CONTENT.len(), whole.len()] {
        let frames = whole.as_bytes().chunks(size).map(Bytes::copy_from_slice).collect();
        let out: Vec<u8> = frames_out(frames).await.concat();
        assert_eq!(String::from_utf8(out).unwrap(), expected, "frames of {size} bytes");
    }
}

#[tokio::test]
async fn a_frame_holding_the_usage_chunk_among_others_keeps_the_others() {
    let frames = vec![Bytes::from(format!("{FINISH}{USAGE}")), Bytes::from_static(DONE.as_bytes())];
    let out: Vec<u8> = frames_out(frames).await.concat();
    assert_eq!(String::from_utf8(out).unwrap(), format!("{FINISH}{DONE}"));
}

/// Found by the `stream_openai` fuzz target's check that the filter drops
/// the usage chunk and nothing else (on a hand-made input; libFuzzer had not
/// reached it on its own): a usage chunk whose JSON spans two `data:` lines
/// (`"usage":` on one, the object on the next) passed in a frame untouched,
/// because the frame's bytes show `"usage":\ndata: {`, not `"usage":{`.
#[tokio::test]
async fn a_usage_chunk_split_over_data_lines_is_dropped_too() {
    for usage in [
        "data: {\"choices\":[],\"usage\":\ndata: {\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
        "data: {\"choices\":[],\"usage\"\ndata: :{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
    ] {
        let frames = [FINISH, usage, DONE].map(|s| Bytes::from_static(s.as_bytes())).to_vec();
        let out: Vec<u8> = frames_out(frames).await.concat();
        assert_eq!(String::from_utf8(out).unwrap(), format!("{FINISH}{DONE}"), "{usage:?}");
    }
}

/// A batch of whole events (as `CoalescedBody` makes them) keeps every
/// other event byte for byte, comments and `id:` lines included: only the
/// usage chunk's bytes are cut, nothing is re-encoded.
#[tokio::test]
async fn a_batch_of_whole_events_loses_only_the_usage_chunk_bytes() {
    let comment = ": keep-alive\n\n";
    let with_id = "id: 7\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\n";
    let batch = format!("{CONTENT}{comment}{with_id}{FINISH}{USAGE}{DONE}");
    let out = frames_out(vec![Bytes::from(batch)]).await;
    assert_eq!(out.len(), 1, "one frame in, one frame out");
    assert_eq!(String::from_utf8(out[0].to_vec()).unwrap(), format!("{CONTENT}{comment}{with_id}{FINISH}{DONE}"));

    // A usage object in an event that is not the usage-only chunk stays.
    let both = "data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
    let out = frames_out(vec![Bytes::from(format!("{both}{USAGE}{DONE}"))]).await;
    assert_eq!(String::from_utf8(out.concat()).unwrap(), format!("{both}{DONE}"));
}
