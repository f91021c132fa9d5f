//! The load generator: `concurrency` keep-alive HTTP/1.1 connections, each
//! sending the next request as soon as the previous answer has been read to
//! its end. Latency is request sent to last byte read; for streams the time
//! to the first data frame is kept too.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Chat,
    Stream,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Chat => "chat",
            Mode::Stream => "stream",
        }
    }
}

/// Where to send: the address, and the path and credentials it wants.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: &'static str,
    pub bearer: Option<&'static str>,
    pub model: &'static str,
}

#[derive(Debug, Default)]
pub struct Samples {
    pub latencies_ns: Vec<u64>,
    pub first_chunk_ns: Vec<u64>,
    pub errors: u64,
    pub elapsed: Duration,
    /// Requests answered during the warm-up: the server's CPU time covers
    /// them too.
    pub warmup_requests: u64,
}

impl Samples {
    pub fn requests(&self) -> usize {
        self.latencies_ns.len()
    }

    pub fn rps(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    /// Sorts in place, so call once the run is over.
    pub fn finish(&mut self) {
        self.latencies_ns.sort_unstable();
        self.first_chunk_ns.sort_unstable();
    }
}

/// The `q` quantile of sorted samples, in microseconds.
pub fn quantile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted_ns.len() as f64 * q).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}

/// Drives `target` with `concurrency` connections: a warm-up that is thrown
/// away, then `duration` of measured requests.
pub async fn run(target: &Target, mode: Mode, concurrency: usize, warmup: Duration, duration: Duration) -> Samples {
    let body = Bytes::from(format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"Say hello."}}],"stream":{}}}"#,
        target.model,
        mode == Mode::Stream
    ));
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let workers: Vec<_> =
        (0..concurrency).map(|_| tokio::spawn(worker(target.clone(), body.clone(), measure_from, end))).collect();
    let mut all = Samples::default();
    for worker in workers {
        let samples = worker.await.expect("a load worker panicked");
        all.latencies_ns.extend(samples.latencies_ns);
        all.first_chunk_ns.extend(samples.first_chunk_ns);
        all.errors += samples.errors;
        all.warmup_requests += samples.warmup_requests;
    }
    // The last requests sent before `end` finish a little after it.
    all.elapsed = Instant::now().saturating_duration_since(measure_from);
    all.finish();
    all
}

async fn worker(target: Target, body: Bytes, measure_from: Instant, end: Instant) -> Samples {
    let mut samples = Samples::default();
    'connect: while Instant::now() < end {
        let Ok(stream) = TcpStream::connect(target.addr).await else {
            samples.errors += 1;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await else {
            samples.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        loop {
            let sent = Instant::now();
            if sent >= end {
                break 'connect;
            }
            if sender.ready().await.is_err() {
                samples.errors += 1;
                continue 'connect;
            }
            let mut req = Request::post(target.path)
                .header(header::HOST, "127.0.0.1")
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(bearer) = target.bearer {
                req = req.header(header::AUTHORIZATION, bearer);
            }
            let req = req.body(Full::new(body.clone())).expect("valid request parts");
            let Ok(res) = sender.send_request(req).await else {
                samples.errors += 1;
                continue 'connect;
            };
            let ok = res.status().is_success();
            let mut body = res.into_body();
            let mut first_chunk = None;
            let mut broken = false;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) if frame.is_data() && first_chunk.is_none() => first_chunk = Some(Instant::now()),
                    Ok(_) => {}
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
            }
            let done = Instant::now();
            if sent < measure_from {
                samples.warmup_requests += 1;
                continue;
            }
            if !ok || broken {
                samples.errors += 1;
                if broken {
                    continue 'connect;
                }
                continue;
            }
            samples.latencies_ns.push(done.duration_since(sent).as_nanos() as u64);
            if let Some(first) = first_chunk {
                samples.first_chunk_ns.push(first.duration_since(sent).as_nanos() as u64);
            }
        }
    }
    samples
}
