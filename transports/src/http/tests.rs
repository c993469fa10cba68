//! Unit tests of the transport's pure parts: validation, request building,
//! classification. Exchanges with real servers are in `tests/http.rs`.

use std::sync::Arc;

use super::*;
use crate::SourceRef;

fn client(allow_private_networks: bool) -> HttpClient {
    HttpClient::new(HttpClientOptions {
        allow_private_networks,
        native_roots: false,
        ..HttpClientOptions::default()
    })
    .unwrap()
}

/// An endpoint that opts in to `X-Webhook-Secret`, so both secret paths are covered.
fn config(url: &str) -> HttpEndpointConfig {
    HttpEndpointConfig {
        url: url.into(),
        send_secret_header: true,
        ..HttpEndpointConfig::default()
    }
}

fn build(config: HttpEndpointConfig) -> Result<HttpTransport, HttpConfigError> {
    HttpTransport::new(config, client(false))
}

fn delivery() -> Delivery {
    let event = Event::decode(
        Bytes::from_static(br#"{"event":"message.sent","id":"e-1","data":{"n":1.50}}"#),
        SourceRef {
            topic: "events".into(),
            partition: 0,
            offset: 7,
        },
        Some(1_747_396_800_000),
        1 << 20,
    )
    .unwrap();
    Delivery::new(Arc::new(event), "acme".into())
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn url_errors_name_the_field_and_the_problem() {
    let cases = [
        ("", "not a valid URL"),
        ("hooks.example.com/path", "not a valid URL"),
        ("hooks.example.com", "not an absolute"),
        ("/relative", "not an absolute"),
        ("ftp://hooks.example.com/", "is not http or https"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest", "metadata"),
        ("https://[::ffff:192.168.0.1]/", "IPv4-mapped"),
    ];
    for (url, expected) in cases {
        let err = build(config(url)).unwrap_err();
        assert_eq!(err.field, "url", "{url}");
        assert!(err.to_string().contains(expected), "{url}: {err}");
        if !url.is_empty() {
            assert!(!err.reason.contains("pw@"), "{err}");
        }
    }
    assert!(build(config("https://hooks.example.com/in?x=1")).is_ok());
    assert!(build(config("HTTP://hooks.example.com")).is_ok());
    assert!(build(config("http://8.8.8.8:8080/")).is_ok());

    // Private literals are fine when the deployment allows them; metadata never is.
    let open = client(true);
    assert!(HttpTransport::new(config("http://127.0.0.1:1/"), open.clone()).is_ok());
    let err = HttpTransport::new(config("http://169.254.169.254/"), open).unwrap_err();
    assert_eq!(err.field, "url");
}

#[test]
fn secret_errors_name_the_index_without_the_secret() {
    let mut cfg = config("https://hooks.example.com/");
    cfg.secrets = vec![SECRET.into(), "whsec_n0t*base64".into()];
    let err = build(cfg.clone()).unwrap_err();
    assert_eq!(err.field, "secrets[1]");
    assert_eq!(
        err.to_string(),
        "secrets[1]: is not whsec_<base64>: invalid base64 at offset 9"
    );

    cfg.secrets = vec![String::new()];
    assert_eq!(
        build(cfg.clone()).unwrap_err().to_string(),
        "secrets[0]: is empty"
    );

    cfg.secrets = vec!["line\nbreak".into()];
    let err = build(cfg.clone()).unwrap_err();
    assert_eq!(err.field, "secrets[0]");
    assert!(!err.to_string().contains("break"));
    // Not sent as a header, so not a problem.
    cfg.send_secret_header = false;
    assert!(build(cfg).is_ok());
}

#[test]
fn header_errors_name_the_header() {
    let cases = [
        ("X-Foo", "bad\u{7f}value", "headers.X-Foo: value contains"),
        (
            "Bad Name",
            "v",
            "headers.Bad Name: is not a valid header name",
        ),
        ("", "v", "headers.: is not a valid header name"),
        (
            "Content-Type",
            "text/plain",
            "headers.Content-Type: is set by the dispatcher",
        ),
        (
            "webhook-signature",
            "v1,x",
            "headers.webhook-signature: is set by the dispatcher",
        ),
        ("Host", "internal", "headers.Host: is set by the dispatcher"),
        (
            "Transfer-Encoding",
            "chunked",
            "headers.Transfer-Encoding: is set",
        ),
    ];
    for (name, value, expected) in cases {
        let mut cfg = config("https://hooks.example.com/");
        cfg.headers = vec![(name.into(), value.into())];
        let err = build(cfg).unwrap_err();
        assert!(err.to_string().starts_with(expected), "{name}: {err}");
    }
}

#[test]
fn timeout_must_be_positive_and_bounded() {
    let mut cfg = config("https://hooks.example.com/");
    cfg.timeout = Duration::ZERO;
    assert_eq!(build(cfg.clone()).unwrap_err().field, "timeout");
    cfg.timeout = Duration::MAX;
    assert_eq!(build(cfg.clone()).unwrap_err().field, "timeout");
    cfg.timeout = MAX_TIMEOUT;
    assert!(build(cfg).is_ok());
}

#[test]
fn request_carries_the_wire_format() {
    let mut cfg = config("https://hooks.example.com/in");
    cfg.secrets = vec![SECRET.into()];
    cfg.send_secret_header = false;
    cfg.shared_secret = Some("shared-for-the-header".into());
    cfg.headers = vec![("Authorization".into(), "Bearer t0ken".into())];
    let transport = build(cfg).unwrap();
    let mut d = delivery();
    let mut event = (*d.event).clone();
    event.traceparent = Some(Bytes::from_static(
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ));
    d.event = Arc::new(event);

    let request = transport.build_request(&d).unwrap();
    assert_eq!(request.method(), Method::POST);
    assert_eq!(request.uri(), "https://hooks.example.com/in");
    let h = request.headers();
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    assert_eq!(get("content-type"), "application/json");
    assert!(get("user-agent").starts_with("webhook-dispatcher/"));
    assert_eq!(get("x-webhook-event"), "message.sent");
    assert_eq!(get("x-webhook-delivery-id"), d.id.to_string());
    assert_eq!(get("webhook-id"), d.id.to_string());
    assert_eq!(get("x-webhook-secret"), "shared-for-the-header");
    assert!(h["x-webhook-secret"].is_sensitive());
    assert_eq!(get("authorization"), "Bearer t0ken");
    assert_eq!(
        get("traceparent"),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let ts: i64 = get("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 5);
    let expected =
        Signer::new(&[SECRET])
            .unwrap()
            .sign(get("webhook-id"), get("webhook-timestamp"), &d.body);
    assert_eq!(get("webhook-signature"), expected);
}

#[test]
fn request_without_whsec_secret_is_unsigned() {
    let mut cfg = config("https://hooks.example.com/in");
    cfg.secrets = vec!["plain-shared-secret".into()];
    let transport = build(cfg.clone()).unwrap();
    let request = transport.build_request(&delivery()).unwrap();
    let h = request.headers();
    assert_eq!(h["x-webhook-secret"], "plain-shared-secret");
    for name in [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "traceparent",
    ] {
        assert!(!h.contains_key(name), "{name}");
    }

    cfg.send_secret_header = false;
    let request = build(cfg).unwrap().build_request(&delivery()).unwrap();
    assert!(!request.headers().contains_key("x-webhook-secret"));
}

#[test]
fn event_type_header_shares_the_record_bytes() {
    let d = delivery();
    let value = shared_header_value(&d.event, d.event.event_type()).unwrap();
    assert_eq!(value, "message.sent");
    // A string from elsewhere is copied, not sliced out of bounds.
    assert_eq!(
        shared_header_value(&d.event, "other.type").unwrap(),
        "other.type"
    );
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect()
}

fn now() -> SystemTime {
    // Wed, 21 Oct 2015 07:28:00 GMT
    UNIX_EPOCH + Duration::from_secs(1_445_412_480)
}

#[test]
fn classifies_statuses() {
    let none = HeaderMap::new();
    let cls = |code: u16, h: &HeaderMap| {
        classify_response(StatusCode::from_u16(code).unwrap(), h, "", now())
    };

    assert_eq!(
        cls(410, &none),
        Outcome::Permanent {
            status: Some(410),
            reason: "HTTP 410 Gone".into(),
            disable_endpoint: true
        }
    );
    for code in [400, 401, 403, 404, 413, 422] {
        assert!(
            matches!(
                cls(code, &none),
                Outcome::Permanent {
                    disable_endpoint: false,
                    ..
                }
            ),
            "{code}"
        );
    }
    for code in [408, 500, 502, 503, 504, 599] {
        assert!(
            matches!(
                cls(code, &none),
                Outcome::Retry {
                    retry_after: None,
                    ..
                }
            ),
            "{code}"
        );
    }
    // Asked to slow down: a throttle, never a failure.
    assert!(matches!(
        cls(429, &none),
        Outcome::Throttled { retry_after, .. } if retry_after == DEFAULT_THROTTLE_WAIT
    ));
    let after = headers(&[("retry-after", "7")]);
    for code in [429, 502, 503, 504] {
        assert!(
            matches!(
                cls(code, &after),
                Outcome::Throttled { retry_after, .. } if retry_after == Duration::from_secs(7)
            ),
            "{code}"
        );
    }
    assert!(
        matches!(cls(500, &after), Outcome::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(7)),
        "a 500 with Retry-After is a failure that names its earliest retry"
    );
    for code in [100, 199, 600, 999] {
        assert!(matches!(cls(code, &none), Outcome::Retry { .. }), "{code}");
    }
    assert_eq!(
        cls(
            301,
            &headers(&[("location", "https://elsewhere.example/x")])
        ),
        Outcome::Permanent {
            status: Some(301),
            reason: "redirect not followed: Location https://elsewhere.example/x".into(),
            disable_endpoint: false
        }
    );
    assert!(matches!(
        cls(307, &none),
        Outcome::Permanent { reason, .. } if reason == "redirect not followed: no Location"
    ));
}

#[test]
fn retry_after_forms() {
    // A 500 keeps Retry-After as the floor of its retry (a 429 or 503 with
    // it throttles instead: see above).
    let after = |v: &'static str| match classify_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &headers(&[("retry-after", v)]),
        "",
        now(),
    ) {
        Outcome::Retry { retry_after, .. } => retry_after,
        other => panic!("{other:?}"),
    };
    assert_eq!(after("3"), Some(Duration::from_secs(3)));
    assert_eq!(after(" 120 "), Some(Duration::from_secs(120)));
    assert_eq!(after("0"), Some(Duration::ZERO));
    assert_eq!(
        after("Wed, 21 Oct 2015 07:28:30 GMT"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(after("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
    assert_eq!(after("soon"), None);
    assert_eq!(after("-5"), None);
    assert_eq!(after("1.5"), None);
    assert_eq!(after("99999999999999999999999"), None);
    assert_eq!(after(""), None);
}

#[test]
fn reasons_carry_a_sanitised_excerpt() {
    let body = format!(
        "{{\"error\":\"bad\nthing\"}}\r\n\u{202E}\t{}",
        "x".repeat(1000)
    );
    let outcome = classify_response(StatusCode::BAD_REQUEST, &HeaderMap::new(), &body, now());
    let Outcome::Permanent { reason, .. } = outcome else {
        panic!("{outcome:?}")
    };
    let excerpt = reason.strip_prefix("HTTP 400 Bad Request: ").unwrap();
    assert!(
        excerpt.starts_with("{\"error\":\"bad thing\"} xxx"),
        "{excerpt}"
    );
    assert_eq!(excerpt.chars().count(), EXCERPT_CHARS);
    assert!(excerpt.ends_with('…'));
    assert!(!reason.chars().any(|c| c.is_control() || c == '\u{202E}'));

    assert_eq!(sanitize("  a \n\n b  "), "a b");
    assert_eq!(
        sanitize(&"é".repeat(EXCERPT_CHARS)),
        "é".repeat(EXCERPT_CHARS)
    );
    assert_eq!(sanitize(""), "");
}

#[test]
fn reasons_never_carry_secrets() {
    let mut cfg = config("https://hooks.example.com/");
    cfg.secrets = vec![SECRET.into(), "plain-token-123".into()];
    cfg.send_secret_header = false;
    let transport = build(cfg).unwrap();
    let echoed =
        format!("you sent {SECRET} and plain-token-123 and MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let outcome = transport.scrub(Outcome::Retry {
        status: Some(500),
        reason: echoed,
        retry_after: None,
    });
    let Outcome::Retry { reason, .. } = outcome else {
        panic!()
    };
    assert_eq!(
        reason,
        "you sent whsec_[redacted] and [redacted] and [redacted]"
    );

    let debug = format!("{transport:?}");
    assert!(
        !debug.contains("MfKQ") && !debug.contains("plain-token"),
        "{debug}"
    );
}

#[test]
fn config_debug_hides_secrets_and_values() {
    let cfg = HttpEndpointConfig {
        url: "https://hooks.example.com/T0KEN".into(),
        secrets: vec![SECRET.into()],
        headers: vec![("Authorization".into(), "Bearer abc".into())],
        ..HttpEndpointConfig::default()
    };
    let debug = format!("{cfg:?}");
    assert!(debug.contains("Authorization"));
    for leak in ["T0KEN", "MfKQ", "Bearer"] {
        assert!(!debug.contains(leak), "{debug}");
    }
}

#[test]
fn error_chain_reads_once() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    let err = Outer(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "refused",
    ));
    assert_eq!(error_chain(&err), "outer: refused");
}

/// Finding 4 of the security review: `send_secret_header` put the `whsec_`
/// signing key itself in a header, over plain http too. Anyone who saw it
/// (a proxy log) could forge signatures.
#[test]
fn the_signing_key_is_never_sent_as_a_header() {
    let mut cfg = config("https://hooks.example.com/in");
    cfg.secrets = vec![SECRET.into()];
    let err = build(cfg.clone()).unwrap_err();
    assert_eq!(err.field, "send_secret_header");
    assert!(err.reason.contains("shared_secret"), "{err}");
    assert!(!err.reason.contains("MfKQ"), "{err}");

    cfg.shared_secret = Some(SECRET.into());
    let err = build(cfg.clone()).unwrap_err();
    assert_eq!(err.field, "shared_secret");

    // A separate shared secret is fine, and signing goes on with the key.
    cfg.send_secret_header = false;
    cfg.shared_secret = Some("a-separate-value".into());
    let request = build(cfg).unwrap().build_request(&delivery()).unwrap();
    assert_eq!(request.headers()["x-webhook-secret"], "a-separate-value");
    assert!(request.headers().contains_key("webhook-signature"));
}

#[test]
fn secrets_are_refused_over_plain_http_unless_allowed() {
    let mut cfg = config("http://8.8.8.8/in");
    cfg.secrets = vec!["plain-shared-secret".into()];
    let err = build(cfg.clone()).unwrap_err();
    assert_eq!(err.field, "url");
    assert!(err.reason.contains("https://"), "{err}");
    // Signatures alone are fine over http: they do not reveal the key.
    let mut signed = config("http://8.8.8.8/in");
    signed.send_secret_header = false;
    signed.secrets = vec![SECRET.into()];
    assert!(build(signed).is_ok());
    let dev = HttpClient::new(HttpClientOptions {
        allow_plaintext_secrets: true,
        native_roots: false,
        ..HttpClientOptions::default()
    })
    .unwrap();
    assert!(HttpTransport::new(cfg, dev).is_ok());
}

/// Finding 6: configured header values are scrubbed from failure reasons
/// like secrets are (the exchange itself is tested in `tests/http.rs`).
#[test]
fn configured_header_values_are_redacted() {
    let mut cfg = config("https://hooks.example.com/in");
    cfg.send_secret_header = false;
    cfg.headers = vec![
        ("Authorization".into(), "Bearer s3cr3t-t0ken".into()),
        ("X-Api-Key".into(), "k-123456".into()),
        ("X-Flag".into(), "1".into()),
    ];
    let t = build(cfg).unwrap();
    let text = t.redact("echo: Bearer s3cr3t-t0ken / token s3cr3t-t0ken / key k-123456 / flag 1");
    assert!(!text.contains("s3cr3t"), "{text}");
    assert!(!text.contains("k-123456"), "{text}");
    assert!(
        text.contains("flag 1"),
        "short values are left alone: {text}"
    );
}

/// A lane drops a transport that says it is rebuilt cheaply while it has
/// nothing to send: one holding an OAuth2 token must say no, or every
/// wake would fetch a new token.
#[test]
fn only_a_transport_without_a_token_is_rebuilt_cheaply() {
    let plain = build(config("https://hooks.example/in")).unwrap();
    assert!(plain.rebuilt_cheaply());
    let with_token = HttpEndpointConfig {
        oauth2: Some(oauth2::OAuth2Settings {
            token_url: "https://auth.example/token".into(),
            client_id: "id".into(),
            client_secret: "secret".into(),
            scopes: Vec::new(),
            auth_method: Default::default(),
        }),
        send_secret_header: false,
        ..config("https://hooks.example/in")
    };
    assert!(!build(with_token).unwrap().rebuilt_cheaply());
}
