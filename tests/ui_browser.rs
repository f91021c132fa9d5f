//! The dashboard at `GET /ui`, in a real headless Chromium: log in, watch
//! a key turn `cooling` with its countdown, be refused with a wrong key,
//! disable and enable a key as the admin, see the charts and the last
//! requests. keyrelay runs in process against mock upstreams; every wait
//! polls the DOM, bounded ([`support::browser::BROWSER_WAIT`]).
//!
//! `KEYRELAY_UPDATE_SCREENSHOTS=1` also writes the README's screenshot,
//! `docs/dashboard.png`, from the first test.

mod support;

use http::Method;
use serde_json::json;
use support::{
    ADMIN_KEY, Auth, KEY_ONE, KEY_TWO, MockUpstream, PROXY_KEY, Proxy, Script, TestClient, assert_no_secret,
    browser::{Browser, Page},
    chat_body, dialect_env, get, key_id, key_id_of, openai_env, post, request,
};

/// Opens the dashboard in a new tab and signs in with `key`.
async fn signed_in(browser: &Browser, proxy: &Proxy, key: &str, width: u32) -> Page {
    let page = browser.page(width).await;
    page.goto(&proxy.url("/ui")).await;
    page.wait_for("the login form", "!document.getElementById('login').hidden").await;
    page.type_into("#key", key).await;
    page.click("#login button[type=submit]").await;
    page
}

/// A JavaScript expression: the state the row of key `id` shows.
fn state_is(id: &str, state: &str) -> String {
    format!("document.querySelector('tr[data-key=\"{id}\"] td.state')?.dataset.state === '{state}'")
}

async fn chat(client: &TestClient, proxy: &Proxy) {
    let reply = client
        .fetch(post(
            &proxy.url("/v1/chat/completions"),
            Auth::Bearer(PROXY_KEY),
            chat_body("openai/gpt-4o-mini", false),
        ))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// Nothing secret in the page or the tab's storage but the key typed in.
async fn assert_nothing_secret_kept(page: &Page, typed: &str) {
    let html = page.eval("document.documentElement.outerHTML").await;
    assert_no_secret("the dashboard's DOM", html.as_str().unwrap());
    let stored = page.eval("JSON.stringify(Object.entries(sessionStorage))").await;
    assert_eq!(stored, json!(format!("[[\"keyrelay.key\",\"{typed}\"]]")), "only the typed key, in session storage");
    assert_eq!(page.eval("localStorage.length + document.cookie.length").await, json!(0));
    let url = page.eval("location.href").await;
    assert!(!url.as_str().unwrap().contains(typed), "the key is never in a URL: {url}");
}

#[tokio::test]
async fn the_pool_shows_every_key_and_a_rate_limited_one_turns_cooling_with_a_countdown() {
    let (openai, anthropic) = (MockUpstream::start().await, MockUpstream::anthropic().await);
    let proxy = Proxy::start(dialect_env(&[&openai, &anthropic], 2)).await;
    let client = TestClient::http1();
    for _ in 0..4 {
        chat(&client, &proxy).await;
    }
    let browser = Browser::start().await;
    let page = signed_in(&browser, &proxy, PROXY_KEY, 1280).await;

    let (one, two) = (key_id(KEY_ONE), key_id(KEY_TWO));
    page.wait_for("both openai keys ok", &format!("{} && {}", state_is(&one, "ok"), state_is(&two, "ok"))).await;
    page.wait_for("a section per provider", "document.querySelectorAll('section[data-provider]').length === 2").await;
    let anthropic_rows = "document.querySelectorAll('section[data-provider=\"anthropic\"] tr[data-key]').length";
    assert_eq!(page.eval(anthropic_rows).await, json!(2));
    let label = page.eval(&format!("document.querySelector('tr[data-key=\"{one}\"] td.state').textContent")).await;
    assert_eq!(label, json!("OK"), "a state is a word as well as a colour");

    // The upstream rate limits the first key for two minutes; a request
    // that meets it rotates to the other key and succeeds.
    let chats_with_one =
        || openai.requests_with(KEY_ONE).iter().filter(|r| r.path.ends_with("/chat/completions")).count();
    let before = chats_with_one();
    openai.always_for(KEY_ONE, Script::rate_limited(Some("120")));
    support::within("a request to meet the rate-limited key", async {
        while chats_with_one() == before {
            chat(&client, &proxy).await;
        }
    })
    .await;
    page.wait_for("the first key cooling", &state_is(&one, "cooling")).await;
    assert_eq!(page.eval(&state_is(&two, "ok")).await, json!(true));
    let remaining = format!("Number(document.querySelector('tr[data-key=\"{one}\"] td.cooldown').dataset.remaining)");
    let first = page.eval(&remaining).await.as_u64().expect("a countdown in seconds");
    assert!((100..=120).contains(&first), "about two minutes: {first}");
    let cell = page.eval(&format!("document.querySelector('tr[data-key=\"{one}\"] td.cooldown').textContent")).await;
    assert!(cell.as_str().unwrap().contains("gpt-4o-mini"), "the cooling model: {cell}");
    page.wait_for("the countdown to go down", &format!("{remaining} < {first}")).await;

    assert_nothing_secret_kept(&page, PROXY_KEY).await;
    page.screenshot("cooling").await;
    if std::env::var("KEYRELAY_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        readme_screenshot(&page).await;
    }
    assert_eq!(browser.errors(), Vec::<String>::new(), "no exception, no CSP violation");
}

/// `docs/dashboard.png`, once the charts and the last requests have
/// whatever data this keyrelay serves.
async fn readme_screenshot(page: &Page) {
    page.wait_for("the charts' data asked for", "document.getElementById('charts').dataset.source !== undefined").await;
    if page.eval("document.getElementById('charts').dataset.source").await == json!("series") {
        let drawn = "Number(document.getElementById('chart-requests').dataset.points) > 0";
        page.wait_for("the requests chart drawn", drawn).await;
    }
    let png = page.screenshot("dashboard").await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
    std::fs::create_dir_all(path.parent().unwrap()).expect("docs/");
    std::fs::write(&path, png).expect("docs/dashboard.png written");
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_the_right_one_works_on_a_phone() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let browser = Browser::start().await;
    let page = signed_in(&browser, &proxy, "not-the-proxy-key", 390).await;

    page.wait_for("the refusal", "!document.getElementById('login-error').hidden").await;
    let error = page.eval("document.getElementById('login-error').textContent").await;
    assert!(error.as_str().unwrap().contains("401"), "{error}");
    assert_eq!(page.eval("document.getElementById('dashboard').hidden").await, json!(true));
    assert_eq!(page.eval("document.getElementById('login').hidden").await, json!(false));
    assert_eq!(page.eval("sessionStorage.length").await, json!(0), "a refused key is not kept");
    page.screenshot("refused").await;

    page.type_into("#key", PROXY_KEY).await;
    page.click("#login button[type=submit]").await;
    page.wait_for("the keys", &state_is(&key_id(KEY_ONE), "ok")).await;
    assert_eq!(page.eval("document.getElementById('login-error').hidden").await, json!(true));
    // At 390 px the page itself never scrolls sideways: the wide tables
    // scroll inside their own box.
    assert_eq!(page.eval("document.documentElement.scrollWidth <= 390").await, json!(true));
    let table_scrolls = "(() => { const w = document.querySelector('section[data-provider] .scroll'); \
                         return w.scrollWidth > w.clientWidth && getComputedStyle(w).overflowX === 'auto'; })()";
    assert_eq!(page.eval(table_scrolls).await, json!(true));
    page.screenshot("phone").await;
    assert_eq!(browser.errors(), Vec::<String>::new());
}

#[tokio::test]
async fn the_admin_disables_and_enables_a_key_after_confirming_and_the_proxy_key_may_not() {
    let mock = MockUpstream::start().await;
    let mut env = openai_env(&mock, 2);
    env.push(("ADMIN_API_KEY".to_owned(), ADMIN_KEY.to_owned()));
    let proxy = Proxy::start(env).await;
    let browser = Browser::start().await;
    let id = key_id(KEY_ONE);
    let button = |action: &str| format!("tr[data-key=\"{id}\"] button[data-action=\"{action}\"]");
    let dialog_open = "document.getElementById('confirm').open";

    let admin = signed_in(&browser, &proxy, ADMIN_KEY, 1280).await;
    admin.wait_for("the key ok", &state_is(&id, "ok")).await;
    // Cancelled: nothing happens.
    admin.click(&button("disable")).await;
    admin.wait_for("the confirmation", dialog_open).await;
    admin.click("#confirm-no").await;
    admin.wait_for("the dialog closed", &format!("!{dialog_open}")).await;
    assert_eq!(proxy.pool().key_status(&id).map(|k| k.state), Some(keyrelay_layers::pool::KeyState::Ok));

    admin.click(&button("disable")).await;
    admin.wait_for("the confirmation", dialog_open).await;
    let asked = admin.eval("document.getElementById('confirm-text').textContent").await;
    assert!(asked.as_str().unwrap().contains(&id), "{asked}");
    admin.screenshot("confirm").await;
    admin.click("#confirm-yes").await;
    admin.wait_for("the key disabled", &state_is(&id, "disabled")).await;
    admin.click(&button("enable")).await;
    admin.wait_for("the confirmation", dialog_open).await;
    admin.click("#confirm-yes").await;
    admin.wait_for("the key ok again", &state_is(&id, "ok")).await;

    // The proxy key reads the pool but may not change it: the page says so.
    let reader = signed_in(&browser, &proxy, PROXY_KEY, 1280).await;
    reader.wait_for("the key ok", &state_is(&id, "ok")).await;
    reader.click(&button("disable")).await;
    reader.wait_for("the confirmation", dialog_open).await;
    reader.click("#confirm-yes").await;
    reader.wait_for("the refusal", "document.getElementById('message').textContent.includes('403')").await;
    assert_eq!(reader.eval(&state_is(&id, "ok")).await, json!(true));
    assert_nothing_secret_kept(&reader, PROXY_KEY).await;
    assert_eq!(browser.errors(), Vec::<String>::new());
}

/// Needs the ledger's data routes (`/v1/ui/series`, `/v1/ui/recent`).
#[tokio::test]
async fn the_charts_and_the_last_requests_show_the_traffic() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let client = TestClient::http1();
    for _ in 0..3 {
        chat(&client, &proxy).await;
    }
    let browser = Browser::start().await;
    let page = signed_in(&browser, &proxy, PROXY_KEY, 1280).await;

    let points = |chart: &str| format!("Number(document.getElementById('chart-{chart}').dataset.points)");
    page.wait_for("the requests chart drawn", &format!("{} > 0", points("requests"))).await;
    page.wait_for("the tokens chart drawn", &format!("{} > 0", points("tokens"))).await;
    let label = page.eval("document.getElementById('chart-requests').getAttribute('aria-label')").await;
    assert!(label.as_str().unwrap().contains("openai 3"), "a text alternative with the totals: {label}");
    page.wait_for("three requests listed", "document.querySelectorAll('#recent tbody tr').length >= 3").await;
    let first =
        page.eval("[...document.querySelectorAll('#recent tbody tr:first-child td')].map(td => td.textContent)").await;
    let cells: Vec<&str> = first.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    // Time, client, route, model, key, status, ...
    assert!(cells[2].ends_with("chat/completions") && cells[3] == "gpt-4o-mini" && cells[5] == "200", "{cells:?}");

    // The last day, then one key only.
    page.click("#window-24h").await;
    page.wait_for("the day's chart", &format!("{} > 0", points("requests"))).await;
    let one = key_id_of("openai", KEY_ONE);
    page.wait_for(
        "the key to choose",
        &format!("[...document.getElementById('chart-key').options].some(o => o.value === '{one}')"),
    )
    .await;
    page.eval(&format!("(() => {{ const s = document.getElementById('chart-key'); s.value = '{one}'; s.dispatchEvent(new Event('change')); return true; }})()")).await;
    assert!(page.eval(&points("requests")).await.as_u64().unwrap() > 0, "the key served requests");
    page.screenshot("charts").await;
    assert_eq!(browser.errors(), Vec::<String>::new());
}

#[tokio::test]
async fn the_dashboards_files_need_no_key_and_forbid_everything_else() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 1)).await;
    let client = TestClient::http1();
    let mut size = 0;
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/charts.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let reply = client.fetch(get(&proxy.url(path), Auth::None)).await;
        assert_eq!(reply.status, 200, "{path}");
        assert!(reply.header("content-type").unwrap().starts_with(kind), "{path}");
        assert_eq!(reply.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"), "{path}");
        let csp = reply.header("content-security-policy").unwrap();
        for rule in ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(rule), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert_no_secret(path, reply.text());
        size += reply.body.len();
    }
    assert!(size < 64 * 1024, "small: {size} bytes");
    let head = client.fetch(request(Method::HEAD, &proxy.url("/ui"), Auth::None)).await;
    assert_eq!(head.status, 200);
    let wrong = client.fetch(request(Method::POST, &proxy.url("/ui"), Auth::None)).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(client.fetch(get(&proxy.url("/ui/secrets.json"), Auth::None)).await.status, 404);
    // The data the page shows wants the key.
    assert_eq!(client.fetch(get(&proxy.url("/v1/keys"), Auth::None)).await.status, 401);
}

/// A `fetch` that answers the two data routes with `series` (whatever the
/// window asked) and `recent`, and passes everything else on.
fn stub_data_routes(series: &serde_json::Value, recent: &serde_json::Value) -> String {
    format!(
        "(() => {{ const real = window.fetch; const series = {series}; const recent = {recent};
           const answer = (body) => Promise.resolve(new Response(JSON.stringify(body), {{ status: 200, headers: {{ 'content-type': 'application/json' }} }}));
           window.fetch = (url, opts) => {{
             const u = String(url);
             if (u.startsWith('/v1/ui/series')) return answer(series);
             if (u.startsWith('/v1/ui/recent')) return answer(recent);
             return real(url, opts);
           }}; }})()"
    )
}

/// The page's side of the data routes' contract, whatever serves them: the
/// routes are stubbed in the page, so the counts below are exact.
#[tokio::test]
async fn the_charts_count_what_the_series_holds_and_narrow_to_a_key_or_a_client() {
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(openai_env(&mock, 2)).await;
    let (a, b) = (key_id(KEY_ONE), key_id(KEY_TWO));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let start = now / 60_000 * 60_000 - 3_600_000;
    let at = |minute: u64| start + minute * 60_000;
    let bucket = |t,
                  provider: Option<&str>,
                  key: Option<&str>,
                  client: &str,
                  requests: u64,
                  errors,
                  tokens: (u64, u64),
                  cost| {
        json!({ "t_unix_ms": t, "provider": provider, "key": key, "client": client, "requests": requests,
                "errors": errors, "tokens_in": tokens.0, "tokens_out": tokens.1, "cost_usd": cost })
    };
    let series = json!({ "window": "1h", "step_secs": 60, "start_unix_ms": start, "end_unix_ms": start + 3_600_000, "buckets": [
        bucket(at(50), Some("openai"), Some(&a), "default", 2, json!({}), (10, 5), json!(0.01)),
        bucket(at(50), Some("anthropic"), Some("anthropic:0badc0de"), "ci", 1, json!({ "rate_limit_exceeded": 1 }), (0, 0), json!(null)),
        bucket(at(55), Some("openai"), Some(&b), "ci", 4, json!({ "server_error": 2 }), (40, 20), json!(0.04)),
        bucket(at(55), Some("openai"), Some(&a), "default", 1, json!({}), (5, 5), json!(0.0)),
    ]});
    let row = |model: &str, status: u16, code: Option<&str>| {
        json!({ "unix_ms": now, "request_id": "req_1", "client": "ci", "route": "/v1/chat/completions", "provider": "openai",
                "model": model, "key": b, "status": status, "outcome": "completed", "error_code": code, "attempts": 2,
                "duration_ms": 123, "ttfb_ms": 100, "tokens_in": 10, "tokens_out": 5, "cost_usd": 0.0001 })
    };
    // A model name shaped like markup must show as text, never run.
    let recent = json!({ "requests": [row("gpt-4o-mini", 429, Some("rate_limit_exceeded")), row("<img src=x onerror=alert(1)>", 200, None)] });

    let browser = Browser::start().await;
    let page = browser.page(1280).await;
    page.add_init_script(&stub_data_routes(&series, &recent)).await;
    page.goto(&proxy.url("/ui")).await;
    page.type_into("#key", PROXY_KEY).await;
    page.click("#login button[type=submit]").await;

    let points = |chart: &str| format!("Number(document.getElementById('chart-{chart}').dataset.points)");
    let counts = format!("[{}, {}, {}, {}]", points("requests"), points("errors"), points("tokens"), points("cost"));
    page.wait_for("the charts drawn", &format!("{} > 0", points("requests"))).await;
    // Per step, one point per provider (requests, tokens, cost) or per
    // error class; zeros are not drawn.
    assert_eq!(page.eval(&counts).await, json!([3, 2, 2, 2]));
    let label = page.eval("document.getElementById('chart-requests').getAttribute('aria-label')").await;
    assert_eq!(label, json!("Requests, last hour: anthropic 1, openai 7"));
    let cells = "[...document.querySelectorAll('#recent tbody tr:first-child td')].map(td => td.textContent)";
    let first = page.eval(cells).await;
    let first: Vec<String> = serde_json::from_value(first).expect("the cells' text");
    assert_eq!(first[1..7], ["ci", "/v1/chat/completions", "gpt-4o-mini", &b, "429 rate_limit_exceeded", "2"]);
    assert_eq!(page.eval("document.querySelectorAll('#recent img').length").await, json!(0));
    let shown = page.eval("document.querySelector('#recent tbody tr:nth-child(2) td:nth-child(4)').textContent").await;
    assert_eq!(shown, json!("<img src=x onerror=alert(1)>"));

    let choose = |select: &str, value: &str| {
        format!(
            "(() => {{ const s = document.getElementById('{select}'); s.value = '{value}'; s.dispatchEvent(new Event('change')); return s.value; }})()"
        )
    };
    assert_eq!(page.eval(&choose("chart-client", "ci")).await, json!("ci"));
    assert_eq!(page.eval(&counts).await, json!([2, 2, 1, 1]));
    page.eval(&choose("chart-client", "")).await;
    assert_eq!(page.eval(&choose("chart-key", &a)).await, json!(a));
    assert_eq!(page.eval(&counts).await, json!([2, 0, 2, 1]));
    page.eval(&choose("chart-key", "")).await;
    page.screenshot("stubbed-charts").await;
    assert_eq!(browser.errors(), Vec::<String>::new());
}
