//! Inbound TLS (a self-signed certificate made here, HTTP/2 and HTTP/1.1 by
//! ALPN) and load shedding past `server.max_concurrent_requests`.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use keyrelay::config::TlsFiles;
use rustls::pki_types::CertificateDer;
use support::{
    MockUpstream, PROXY_KEY, Script, Valve, chat_body,
    client::{Auth, TestClient, assert_openai_error, get, post},
    eventually,
    proxy::{Proxy, openai_env},
    within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate for 127.0.0.1, its PEM files in `dir`.
fn self_signed(dir: &std::path::Path) -> (TlsFiles, CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&files.cert, made.cert.pem()).unwrap();
    std::fs::write(&files.key, made.signing_key.serialize_pem()).unwrap();
    (files, made.cert.der().clone())
}

type TlsClient = Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

/// A client that trusts only `cert`, offering h2 or http/1.1 by ALPN.
fn tls_client(cert: &CertificateDer<'static>, http2: bool) -> TlsClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
    let connector = if http2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    Client::builder(TokioExecutor::new()).http2_only(http2).build(connector)
}

fn chat(url: &str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("authorization", format!("Bearer {PROXY_KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat_body("openai/gpt-4o-mini", false))))
        .unwrap()
}

#[tokio::test]
async fn https_serves_http2_and_http1_by_alpn_with_a_self_signed_certificate() {
    let mock = MockUpstream::start().await;
    let certs = tempfile::tempdir().unwrap();
    let (files, cert) = self_signed(certs.path());
    let proxy = Proxy::start_with(openai_env(&mock, 1), |s| s.tls = Some(files)).await;
    let url = format!("https://127.0.0.1:{}/v1/chat/completions", proxy.addr().port());

    for (http2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let client = tls_client(&cert, http2);
        let res = within("a TLS answer", client.request(chat(&url))).await.unwrap();
        assert_eq!((res.status().as_u16(), res.version()), (200, version));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["object"], "chat.completion", "{json}");
    }
    assert_eq!(mock.requests().len(), 2);

    // Plain HTTP on the TLS port gets no HTTP answer, and the server goes on.
    let mut plain = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    plain.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = within("the cleartext connection to end", plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/"), "cleartext must not be served on the TLS port");
    let again = within("a TLS answer", tls_client(&cert, true).request(chat(&url))).await.unwrap();
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn unreadable_tls_files_stop_start_up_with_the_file_named() {
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::proxy::load_settings(dir.path(), openai_env(&mock, 1), None).unwrap();
    settings.tls = Some(TlsFiles { cert: dir.path().join("missing.pem"), key: dir.path().join("key.pem") });
    let err = keyrelay::Bound::bind(&settings).await.unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");

    std::fs::write(dir.path().join("empty.pem"), "not a certificate").unwrap();
    settings.tls = Some(TlsFiles { cert: dir.path().join("empty.pem"), key: dir.path().join("empty.pem") });
    let err = keyrelay::Bound::bind(&settings).await.unwrap_err().to_string();
    assert!(err.contains("empty.pem") && err.contains("no PEM certificate"), "{err}");
}

#[tokio::test]
async fn past_the_cap_requests_get_503_with_retry_after_and_the_admitted_ones_finish() {
    let mock = MockUpstream::start().await;
    let valve = Valve::new();
    for _ in 0..2 {
        mock.push(Script::Hold(valve.clone()));
    }
    let proxy = Proxy::start_with(openai_env(&mock, 2), |s| s.max_concurrent_requests = 2).await;
    let client = TestClient::http1();
    let url = proxy.url("/v1/chat/completions");
    let held: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await
            })
        })
        .collect();
    eventually("both requests reach the upstream", || async { mock.requests().len() == 2 }).await;

    let shed = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await;
    assert_openai_error(&shed, 503, "overloaded", "limit of requests in flight");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(mock.requests().len(), 2, "a shed request costs no upstream call");
    let health = client.fetch(get(&proxy.url("/health"), Auth::None)).await;
    assert_eq!(health.status, 200, "status routes are not shed");

    valve.open();
    for request in held {
        assert_eq!(request.await.unwrap().status, 200);
    }
    let after = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await;
    assert_eq!(after.status, 200, "places are free again once the answers ended");
}

/// Holds `held` chat requests at the upstream, then sends one more: its status.
async fn one_more_after_holding(env: Vec<(String, String)>, mock: &MockUpstream, held: usize) -> u16 {
    let valve = Valve::new();
    for _ in 0..held {
        mock.push(Script::Hold(valve.clone()));
    }
    let proxy = Proxy::start(env).await;
    let client = TestClient::http1();
    let url = proxy.url("/v1/chat/completions");
    let holding: Vec<_> = (0..held)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await
            })
        })
        .collect();
    eventually("the held requests reach the upstream", || async { mock.requests().len() == held }).await;
    let one_more = client.fetch(post(&url, Auth::Bearer(PROXY_KEY), chat_body("openai/gpt-4o-mini", false))).await;
    valve.open();
    for request in holding {
        assert_eq!(request.await.unwrap().status, 200);
    }
    one_more.status.as_u16()
}

#[tokio::test]
async fn max_concurrent_requests_comes_from_the_environment_and_zero_means_no_limit() {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 2);
    env.push(("MAX_CONCURRENT_REQUESTS".to_owned(), "2".to_owned()));
    assert_eq!(one_more_after_holding(env, &mock, 2).await, 503, "the env's cap of 2 applies");

    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 2);
    env.push(("MAX_CONCURRENT_REQUESTS".to_owned(), "0".to_owned()));
    assert_eq!(one_more_after_holding(env, &mock, 4).await, 200, "0: no cap, and start-up accepts it");
}
