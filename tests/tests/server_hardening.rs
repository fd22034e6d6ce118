//! What a black-box probe of the server found (issue 23, test 6), each
//! against a real server: odd bytes in path ids, absurd page numbers, a
//! runaway log line, a Compose alias bomb pasted into the dashboard, the
//! dashboard's 429 without Retry-After, no HSTS, and an origin check that
//! ignored the scheme.

use anyhow::{Context, Result};
use fogswarm_e2e::server::{declare, ServerProcess};
use fogswarm_protocol::api::*;
use fogswarm_protocol::logs::{LogChunk, LogOptions, MAX_LINE_BYTES};
use fogswarm_protocol::validate::Role;
use std::time::{Duration, Instant};

fn browser() -> Result<reqwest::Client> {
    fogswarm_client::ensure_crypto_provider();
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// A dashboard session's cookie, signed in with the admin token.
async fn session(http: &reqwest::Client, server: &ServerProcess) -> Result<String> {
    let r = http
        .post(format!("{}/login", server.url))
        .header("origin", &server.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.admin_token().expose()))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 303, "sign-in: {}", r.status());
    Ok(r.headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("session cookie")?
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_black_box_probe_found_is_refused_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&dir.path().join("data"), &[])?;
    let admin = server.admin();
    declare(&admin, "probe", &[("02:f4:00:00:00:01", Role::Leader)]).await?;
    let http = browser()?;
    let cookie = session(&http, &server).await?;

    // Percent-encoded CR LF and bytes that are not UTF-8 in path ids: a
    // 4xx, in the API's JSON shape on the API, never a 500.
    for path in [
        "/swarms/%0D%0A",
        "/swarms/%0D%0Aevil/services/x/log",
        "/devices/%0D%0A",
        "/devices/%FF",
    ] {
        let r = http
            .get(format!("{}{path}", server.url))
            .header("cookie", &cookie)
            .send()
            .await?;
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
    }
    for path in [
        "/v1/swarms/%0D%0A",
        "/v1/devices/%0D%0A",
        "/v1/devices/%FF",
        "/v1/swarms/probe/services/%FF",
    ] {
        let r = http
            .get(format!("{}{path}", server.url))
            .bearer_auth(server.admin_token().expose())
            .send()
            .await?;
        let status = r.status();
        let body = r.text().await?;
        assert!(status.is_client_error(), "{path}: {status} {body}");
        let error: ApiError = serde_json::from_str(&body)
            .with_context(|| format!("{path}: not the API's error shape: {body}"))?;
        assert!(!error.message.is_empty());
    }

    // Page numbers at the edge of u64: a page (empty), not a panic.
    for page in ["18446744073709551615", "9223372036854775807"] {
        let r = http
            .get(format!("{}/devices?page={page}", server.url))
            .header("cookie", &cookie)
            .send()
            .await?;
        assert_eq!(r.status(), 200, "page {page}");
    }

    // A runaway 3.5 MB log line is stored cut to its cap, marked.
    let (device, _) = server.enrol("02:f4:00:00:00:01", &[]).await?;
    let source = fogswarm_client::LogSource::Agent {
        device: "02:f4:00:00:00:01".into(),
    };
    let opened = admin.open_logs(&source, &LogOptions::default()).await?;
    let huge = "x".repeat(3_500_000);
    device
        .post_log_chunk(
            &opened.id,
            &LogChunk {
                lines: vec!["first".into(), huge, "last".into()],
                done: true,
                error: None,
            },
        )
        .await?;
    let page = admin.read_logs(&source, &opened.id, 0).await?;
    assert_eq!(page.lines.len(), 3);
    assert!(
        page.lines[1].len() <= MAX_LINE_BYTES + 64,
        "{}",
        page.lines[1].len()
    );
    assert!(page.lines[1].ends_with("[cut: 3500000 bytes in all]"));
    assert_eq!(page.lines[2], "last");

    // A pasted Compose file of nested aliases: refused at once, by name,
    // and the server's memory does not balloon.
    let leaf = vec!["lol"; 1000].join(",");
    let mut bomb = format!("x-a: &a [{leaf}]\n");
    for w in ["a", "b", "c", "d", "e"].windows(2) {
        let refs = vec![format!("*{}", w[0]); 10].join(",");
        bomb.push_str(&format!("x-{}: &{} [{refs}]\n", w[1], w[1]));
    }
    bomb.push_str("services:\n  web:\n    image: nginx\n");
    let started = Instant::now();
    let form = format!("stack=bomb&compose={}", percent(&bomb));
    let r = http
        .post(format!("{}/swarms/probe/stacks", server.url))
        .header("cookie", &cookie)
        .header("origin", &server.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    let status = r.status();
    let page = r.text().await?;
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("nested YAML aliases"), "{page}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(admin.list_services("probe").await?.is_empty());

    // The dashboard's sign-in, past its limit: 429 with Retry-After.
    let mut last = None;
    for i in 0..12 {
        let r = http
            .post(format!("{}/login", server.url))
            .header("origin", &server.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token=fsa_wrong{i}"))
            .send()
            .await?;
        last = Some((
            r.status(),
            r.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok()),
        ));
    }
    let (status, retry_after) = last.context("answers")?;
    assert_eq!(status, 429);
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );

    // The origin check looks at the scheme too: this server is plain
    // HTTP, so a page of https://the-same-host is another origin.
    let host = server.url.trim_start_matches("http://");
    let r = http
        .post(format!(
            "{}/devices/02:f4:00:00:00:01/decommission",
            server.url
        ))
        .header("cookie", &cookie)
        .header("origin", format!("https://{host}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    assert_ne!(
        admin.get_device("02:f4:00:00:00:01").await?.state,
        DeviceState::Leaving
    );
    // No HSTS over plain HTTP (it would pin browsers to a scheme this
    // server does not serve).
    let r = http.get(format!("{}/login", server.url)).send().await?;
    assert!(r.headers().get("strict-transport-security").is_none());
    drop(server);

    // Over TLS: HSTS on every answer.
    let tls = ServerProcess::start(&dir.path().join("tls"), &["--tls-self-signed"])?;
    let hsts = tls
        .raw_get_header("/healthz", "strict-transport-security")
        .await?;
    assert_eq!(hsts.as_deref(), Some("max-age=31536000"));
    drop(tls);

    // /metrics behind a token: none or a wrong one is refused, the right
    // one reads it; the token never shows in the log.
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, "fsm_a-metrics-token-of-some-length\n")?;
    let guarded = ServerProcess::start(
        &dir.path().join("metrics"),
        &["--metrics-token-file", &token_file.display().to_string()],
    )?;
    let metrics = |token: Option<&str>| {
        let mut r = http.get(format!("{}/metrics", guarded.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(metrics(None).await?.status(), 401);
    assert_eq!(metrics(Some("fsm_wrong")).await?.status(), 401);
    let r = metrics(Some("fsm_a-metrics-token-of-some-length")).await?;
    assert_eq!(r.status(), 200);
    assert!(r.text().await?.contains("fogswarm_"));
    assert!(!guarded
        .log_text()
        .contains("fsm_a-metrics-token-of-some-length"));
    Ok(())
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
