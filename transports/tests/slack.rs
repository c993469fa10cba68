//! The Slack transport against a local fake Slack (a hyper server on
//! 127.0.0.1) that enforces Slack's 1 message/s per webhook URL with 429 +
//! `Retry-After`, checks messages against Slack's block limits, and answers
//! Slack's error bodies; and the rendering of every seed event type,
//! checked on the JSON.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use support::{seed, slack_limits, Ctx};
use transports::slack::render;
use transports::{Delivery, Outcome, Registry, Transport};

/// The fake's minimum gap between two accepted messages to one URL: Slack's
/// one a second, less a little for scheduling on a busy machine.
const MIN_GAP: Duration = Duration::from_millis(950);

/// How long `/services/laggy/...` takes to answer, whatever it answers.
const LAG: Duration = Duration::from_millis(200);

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    path: String,
    status: u16,
    body: Bytes,
}

/// A fake Slack: `/services/ok/...` paths accept (paced), `/services/laggy/...`
/// too but answer only after [`LAG`], other paths answer the error their
/// name says. Stops when dropped.
struct FakeSlack {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeSlack {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSlack {
    async fn start() -> FakeSlack {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let last_accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let seen = seen.clone();
                    let last_accepted = last_accepted.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let last_accepted = last_accepted.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let at = Instant::now();
                            let (status, text, retry_after) =
                                answer(&path, &body, at, &last_accepted).await;
                            seen.lock().unwrap().push(Seen {
                                at,
                                path,
                                status,
                                body,
                            });
                            let mut response = Response::builder().status(status);
                            if let Some(secs) = retry_after {
                                response = response.header("retry-after", secs);
                            }
                            Ok::<_, Infallible>(
                                response.body(Full::new(Bytes::from(text))).unwrap(),
                            )
                        }
                    });
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        FakeSlack { addr, seen, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Slack's answer to one message.
async fn answer(
    path: &str,
    body: &[u8],
    at: Instant,
    last_accepted: &Mutex<HashMap<String, Instant>>,
) -> (u16, &'static str, Option<&'static str>) {
    let kind = path
        .trim_start_matches("/services/")
        .split('/')
        .next()
        .unwrap_or("");
    match kind {
        "invalid" => return (400, "invalid_payload", None),
        "channel_not_found" => return (404, "channel_not_found", None),
        "no_service" => return (404, "no_service", None),
        "archived" => return (410, "channel_is_archived", None),
        "forbidden" => return (403, "action_prohibited", None),
        "broken" => return (500, "rollup_error", None),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return (200, "ok", None);
        }
        _ => {}
    }
    // As Slack: a message over its limits is refused.
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return (400, "invalid_payload", None);
    };
    if slack_limits::check(&message).is_err() {
        return (400, "invalid_blocks", None);
    }
    let decided = {
        let mut last = last_accepted.lock().unwrap();
        match last.get(path) {
            Some(prev) if at.duration_since(*prev) < MIN_GAP => (429, "rate_limited", Some("1")),
            _ => {
                last.insert(path.to_owned(), at);
                (200, "ok", None)
            }
        }
    };
    if kind == "laggy" {
        // Slack's answers take a while to come back; a 429's Retry-After
        // then starts later than the refused message.
        tokio::time::sleep(LAG).await;
    }
    decided
}

fn slack(ctx: &Ctx, settings: Value) -> Arc<dyn Transport> {
    Registry::builtin()
        .get("slack")
        .expect("slack is built in")
        .build(&settings, &ctx.get())
        .expect("valid settings")
}

/// Drive one delivery the way a lane does: `Throttled` waits
/// `retry_after` without spending an attempt; `Retry` spends one.
async fn drive(transport: &dyn Transport, d: &Delivery, throttled: &AtomicUsize) -> Outcome {
    let mut attempts = 0;
    loop {
        let outcome = transport.send(d).await;
        match &outcome {
            Outcome::Throttled { retry_after, .. } => {
                throttled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(*retry_after).await;
            }
            Outcome::Retry { .. } if attempts < 5 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return outcome,
        }
    }
}

#[tokio::test]
async fn no_message_is_lost_and_the_pace_is_kept() {
    let fake = FakeSlack::start().await;
    let ctx = Ctx::new("", true);
    let url = fake.url("/services/ok/B01/paced-token");
    // Two endpoints sharing one webhook URL share its pace.
    let a = slack(&ctx, json!({"url": url}));
    let b = slack(&ctx, json!({"url": url}));

    const N: usize = 7;
    let deliveries: Vec<Delivery> = (0..N)
        .map(|i| {
            let ty = seed::EVENT_TYPES[i % seed::EVENT_TYPES.len()];
            seed::delivery(
                seed::event(ty, i as u64),
                if i % 2 == 0 { "ops-a" } else { "ops-b" },
            )
        })
        .collect();
    let throttled = AtomicUsize::new(0);
    let started = Instant::now();
    // All in flight at once, as two lanes would send them.
    let outcomes = join_all(deliveries.iter().enumerate().map(|(i, d)| {
        let t = if i % 2 == 0 { &a } else { &b };
        drive(&**t, d, &throttled)
    }))
    .await;
    let took = started.elapsed();
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(*o, Outcome::Delivered { status: Some(200) }, "delivery {i}");
    }

    let mut seen = fake.seen();
    seen.sort_by_key(|s| s.at);
    let accepted: Vec<&Seen> = seen.iter().filter(|s| s.status == 200).collect();
    // No message lost, none twice: each delivery's message arrived once.
    assert_eq!(accepted.len(), N, "{seen:#?}");
    for d in &deliveries {
        let want = render::render_value(d, None)["text"].clone();
        let copies = accepted
            .iter()
            .filter(|s| serde_json::from_slice::<Value>(&s.body).unwrap()["text"] == want)
            .count();
        assert!(copies >= 1, "{} lost", d.id);
    }
    // The pace Slack enforces was kept...
    for pair in accepted.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(900), "accepted {gap:?} apart");
    }
    // ...because the transport keeps it itself: whatever Slack answered, no
    // more than the burst went out in any window shorter than the period.
    let burst = transports::slack::pace::BURST as usize;
    for window in seen.windows(burst + 1) {
        let span = window[burst].at.duration_since(window[0].at);
        // (800 ms, not 1 s: arrival times carry the machine's scheduling jitter.)
        assert!(
            span >= Duration::from_millis(800),
            "{} requests in {span:?}",
            burst + 1
        );
    }
    // Every 429 came back as a Throttled outcome (the others were sends
    // that found no slot in time), and 429s stayed few: the transport
    // paced itself rather than leaning on Slack's refusals.
    let rejected = seen.len() - accepted.len();
    assert!(
        rejected <= throttled.load(Ordering::Relaxed),
        "{rejected} 429s"
    );
    assert!(rejected <= N, "{rejected} 429s for {N} messages");
    assert!(
        took >= Duration::from_millis(900) * (N as u32 - 1),
        "{took:?}"
    );
    eprintln!(
        "{N} messages in {took:?}: {} requests, {rejected} answered 429, {} throttled outcomes",
        seen.len(),
        throttled.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_429_is_throttled_with_retry_after_and_closes_the_url() {
    let fake = FakeSlack::start().await;
    let ctx = Ctx::new("", true);
    let url = fake.url("/services/ok/B02/throttle-token");
    let t = slack(&ctx, json!({"url": url}));
    let d1 = seed::delivery(seed::event("message.received", 1), "ops");
    let d2 = seed::delivery(seed::event("message.sent", 2), "ops");
    assert_eq!(t.send(&d1).await, Outcome::Delivered { status: Some(200) });
    // Within the burst, so the transport sends at once; the strict fake says 429.
    match t.send(&d2).await {
        Outcome::Throttled {
            status,
            retry_after,
            reason,
        } => {
            assert_eq!(status, Some(429));
            assert_eq!(retry_after, Duration::from_secs(1));
            assert!(reason.contains("rate_limited"), "{reason}");
            assert!(!reason.contains("throttle-token"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The URL's gate stays closed for Retry-After: the next send waits for
    // it rather than collecting another 429.
    let before = Instant::now();
    assert_eq!(t.send(&d2).await, Outcome::Delivered { status: Some(200) });
    assert!(
        before.elapsed() >= Duration::from_millis(800),
        "{:?}",
        before.elapsed()
    );
}

#[tokio::test]
async fn after_a_429_the_pace_starts_afresh_so_429s_stay_rare() {
    // Slack answers after a while, so the gate reopens a little after the
    // refused message's slot plus Retry-After. A send that then took a slot
    // banked before the 429 would go out less than a period after the one
    // before it, be refused too, and so on: about every other message.
    let fake = FakeSlack::start().await;
    let ctx = Ctx::new("", true);
    let t = slack(
        &ctx,
        json!({"url": fake.url("/services/laggy/B03/lag-token")}),
    );
    const N: usize = 12;
    let deliveries: Vec<Delivery> = (0..N)
        .map(|i| seed::delivery(seed::event("message.sent", 100 + i as u64), "ops"))
        .collect();
    let throttled = AtomicUsize::new(0);
    let outcomes = join_all(deliveries.iter().map(|d| drive(&*t, d, &throttled))).await;
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(*o, Outcome::Delivered { status: Some(200) }, "delivery {i}");
    }
    let mut seen = fake.seen();
    seen.sort_by_key(|s| s.at);
    let refused = seen.iter().filter(|s| s.status == 429).count();
    let timeline: Vec<String> = seen
        .iter()
        .map(|s| {
            format!(
                "{}ms {}",
                s.at.duration_since(seen[0].at).as_millis(),
                s.status
            )
        })
        .collect();
    // The burst after a quiet spell may meet one refusal; after it, the
    // transport keeps Slack's pace itself.
    assert!(
        refused <= 2,
        "{refused} of {} posts answered 429: {timeline:?}",
        seen.len()
    );
}

#[tokio::test]
async fn each_error_class_maps_to_its_outcome() {
    let fake = FakeSlack::start().await;
    let mut ctx = Ctx::new("", true);
    ctx.timeout = Duration::from_secs(2);
    let d = seed::delivery(seed::event("message.failed", 5), "ops");

    let cases: &[(&str, &str)] = &[
        ("channel_not_found", "channel_not_found"),
        ("no_service", "no_service"),
        ("archived", "channel_is_archived"),
        ("forbidden", "action_prohibited"),
    ];
    for (path, code) in cases {
        let token = format!("{path}-secret-token");
        let t = slack(
            &ctx,
            json!({"url": fake.url(&format!("/services/{path}/B/{token}"))}),
        );
        match t.send(&d).await {
            Outcome::Permanent {
                status,
                reason,
                disable_endpoint,
            } => {
                assert!(disable_endpoint, "{path}");
                assert!(matches!(status, Some(403 | 404 | 410)), "{path}");
                assert!(reason.contains(code), "{reason}");
                assert!(reason.contains("disabled"), "{reason}");
                assert!(!reason.contains(&token), "the URL leaked: {reason}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }

    // invalid_payload: dead-lettered with exactly what was sent.
    let t = slack(&ctx, json!({"url": fake.url("/services/invalid/B/tok")}));
    match t.send(&d).await {
        Outcome::Rejected {
            status,
            reason,
            sent,
        } => {
            assert_eq!(status, Some(400));
            assert!(reason.contains("invalid_payload"), "{reason}");
            let posted = fake
                .seen()
                .iter()
                .rev()
                .find(|s| s.path.starts_with("/services/invalid"))
                .unwrap()
                .body
                .clone();
            assert_eq!(sent, posted);
            let message: Value = serde_json::from_slice(&sent).unwrap();
            assert!(message["blocks"].is_array());
        }
        other => panic!("{other:?}"),
    }

    // Server errors and timeouts are retried.
    let t = slack(&ctx, json!({"url": fake.url("/services/broken/B/tok")}));
    match t.send(&d).await {
        Outcome::Retry { status, reason, .. } => {
            assert_eq!(status, Some(500));
            assert!(reason.contains("rollup_error"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let t = slack(&ctx, json!({"url": fake.url("/services/slow/B/tok")}));
    let started = Instant::now();
    match t.send(&d).await {
        Outcome::Retry {
            status: None,
            reason,
            ..
        } => assert!(reason.contains("did not answer"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "the endpoint timeout bounds a send"
    );

    // Nobody listening: retried, and the URL is not in the reason.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let t = slack(
        &ctx,
        json!({"url": format!("http://{closed}/services/T/B/gone-token")}),
    );
    match t.send(&d).await {
        Outcome::Retry {
            status: None,
            reason,
            ..
        } => assert!(!reason.contains("gone-token"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_send_waits_for_its_slot_only_within_the_timeout() {
    let fake = FakeSlack::start().await;
    let mut ctx = Ctx::new("", true);
    ctx.timeout = Duration::from_millis(600);
    let t = slack(
        &ctx,
        json!({"url": fake.url("/services/ok/B03/slot-token")}),
    );
    let burst = transports::slack::pace::BURST as u64;
    let mut outcomes = Vec::new();
    for i in 0..=burst {
        let d = seed::delivery(seed::event("contact.created", i), "ops");
        let started = Instant::now();
        outcomes.push(t.send(&d).await);
        // A wait for the next slot (≥ 1 s) would show here.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }
    // The burst went out; the next had no slot within half the timeout and
    // was handed back as throttled (not an attempt), not held past it.
    match outcomes.last().unwrap() {
        Outcome::Throttled {
            status: None,
            retry_after,
            ..
        } => {
            assert!(
                *retry_after >= Duration::from_millis(300),
                "{retry_after:?}"
            )
        }
        other => panic!("{other:?}"),
    }
}

// ---- rendering, checked on the JSON ----

fn rendered(d: &Delivery) -> Value {
    let bytes = render::render(d, None);
    let message: Value = serde_json::from_slice(&bytes).expect("valid JSON");
    if let Err(e) = slack_limits::check(&message) {
        panic!("{}: {e}\n{message:#}", d.event.event_type());
    }
    message
}

#[test]
fn every_seed_event_type_renders_within_the_limits() {
    for (i, ty) in seed::EVENT_TYPES.iter().enumerate() {
        let d = seed::delivery(seed::event(ty, i as u64), "ops");
        let message = rendered(&d);
        let text = slack_limits::all_text(&message);
        let data: Value = serde_json::from_slice(d.event.data()).unwrap();
        // Who, what and when are on every message.
        assert!(message["blocks"][0]["type"] == "header", "{ty}");
        assert!(text.contains(ty), "{ty}: the event type is shown");
        assert!(text.contains("<!date^"), "{ty}: the time is shown");
        let expect: Vec<String> = match *ty {
            "message.received" | "message.incoming" => vec![
                data["contact_name"].as_str().unwrap().into(),
                data["from"].as_str().unwrap().into(),
            ],
            "message.sent" => vec![data["to"].as_str().unwrap().into(), "AI agent".into()],
            "message.delivered" | "message.read" => {
                vec![data["recipient_id"].as_str().unwrap().into()]
            }
            "message.failed" => vec!["131047".into(), "Re-engagement message".into()],
            "contact.created" | "contact.updated" => vec![
                data["name"].as_str().unwrap().into(),
                data["phone"].as_str().unwrap().into(),
            ],
            "conversation.opened" => vec![data["contact_name"].as_str().unwrap().into()],
            "conversation.closed" => vec!["ORD-12345".into(), "auto".into(), "12 min".into()],
            "campaign.completed" => {
                let total = data["total"].as_f64().unwrap();
                let share = |n: &str| {
                    let n = data[n].as_u64().unwrap();
                    format!("{n} ({:.1} %)", n as f64 * 100.0 / total)
                };
                vec!["May Promotion".into(), share("sent"), share("failed")]
            }
            "transfer.created" => vec!["Customer asking about refund".into(), "unassigned".into()],
            _ => unreachable!(),
        };
        for want in expect {
            assert!(text.contains(&want), "{ty}: {want:?} not in\n{message:#}");
        }
        let fallback = message["text"].as_str().unwrap();
        assert!(!fallback.contains('\n'), "{ty}: one-line fallback");
    }
}

#[test]
fn message_text_is_shown_escaped() {
    let data = json!({"contact_name": "Eve <@here>", "from": "+1", "type": "text",
        "content": {"text": "a & b <https://evil|click> > c"}});
    let d = seed::delivery(seed::event_with("message.received", 1, data), "ops");
    let message = rendered(&d);
    let body = message["blocks"][1]["text"]["text"].as_str().unwrap();
    assert_eq!(body, "> a &amp; b &lt;https://evil|click&gt; &gt; c");
    let fields = message["blocks"][2].to_string();
    assert!(fields.contains("Eve &lt;@here&gt;"), "{fields}");
    assert!(!message["text"].as_str().unwrap().contains("<@here>"));
    // The header is plain text: shown as written, never parsed.
    assert_eq!(
        message["blocks"][0]["text"]["text"],
        "💬 New message from Eve <@here>"
    );
}

#[test]
fn content_variations_render_readably() {
    let wants = [
        "Here is the damaged product",
        "invoice.pdf",
        "audio message",
        "video message",
        "Dubai Mall, Financial Centre Rd, Dubai (25.2048, 55.2708)",
        "Yes, confirm",
        "Red T-Shirt (Cotton, Size M)",
        "Template order_shipped (en)",
    ];
    for (i, (variation, want)) in seed::content_variations()
        .into_iter()
        .zip(wants)
        .enumerate()
    {
        let mut data = seed::data("message.received", i as u64);
        let obj = data.as_object_mut().unwrap();
        for (k, v) in variation.as_object().unwrap() {
            obj.insert(k.clone(), v.clone());
        }
        let d = seed::delivery(seed::event_with("message.received", i as u64, data), "ops");
        let text = slack_limits::all_text(&rendered(&d));
        assert!(text.contains(want), "{want:?} not in {text}");
    }
}

#[test]
fn unknown_types_list_their_fields_generically() {
    let data = json!({"order_id": "ORD-1", "amount": 12.5, "paid": true, "items": ["a", "b"], "meta": {"x": 1}, "gone": null});
    let d = seed::delivery(seed::event_with("order.paid", 1, data), "ops");
    let message = rendered(&d);
    let text = slack_limits::all_text(&message);
    for want in [
        "order.paid",
        "*order_id*\nORD-1",
        "*amount*\n12.5",
        "*paid*\ntrue",
        "*items*\na, b",
        "{\"x\":1}",
        "*gone*\nnull",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
}

#[test]
fn oversized_content_is_cut_cleanly_within_every_limit() {
    // A 10,000-character message of multi-byte, astral and escaped characters.
    let long = "Ünïcödé & <tags> 🎉 ".repeat(500);
    let data = json!({"contact_name": "N".repeat(400), "from": "+1", "type": "text", "content": {"text": long}});
    let d = seed::delivery(seed::event_with("message.received", 1, data), "ops");
    let message = rendered(&d);
    let header = message["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(header.ends_with('…') && header.chars().count() <= 150);
    let body = message["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(body.ends_with('…'), "cut with an ellipsis");
    assert!(body.chars().count() <= 3000);
    let kept = body.trim_end_matches('…');
    assert!(!kept.ends_with('&') && !kept.contains("&am…") && !kept.ends_with("&lt"));
    assert!(message["text"].as_str().unwrap().chars().count() <= 3000);

    // A thousand fields: 50 blocks, the last body block says what is hidden.
    let many: serde_json::Map<String, Value> = (0..1000)
        .map(|i| (format!("field_{i:04}"), json!("v".repeat(300))))
        .collect();
    let d = seed::delivery(
        seed::event_with("inventory.snapshot", 2, Value::Object(many)),
        "ops",
    );
    let message = rendered(&d);
    let blocks = message["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 50);
    let note = slack_limits::all_text(&blocks[48]);
    assert!(note.contains("more fields not shown"), "{note}");
    let shown: usize = blocks
        .iter()
        .filter_map(|b| b["fields"].as_array())
        .map(Vec::len)
        .sum();
    assert!(note.contains(&(1000 - shown).to_string()), "{note}");
}

#[test]
fn a_template_replaces_the_rendering() {
    let ctx = Ctx::new("", false);
    let settings = json!({
        "url": "https://hooks.slack.com/services/T000/B000/XXXX",
        "template": {
            "header": "{{event}} for {{data.contact_name}}",
            "text": "*{{data.contact_name}}* wrote: {{data.content.text}} (<https://crm.example/c/{{data.contact_id}}|open>){{data.nope}}",
        },
    });
    let t = transports::slack::SlackTransport::new(
        transports::registry::parse_settings(&settings).unwrap(),
        &ctx.get(),
    )
    .unwrap();
    let data =
        json!({"contact_name": "A&B", "contact_id": "c-1", "content": {"text": "hi <there>"}});
    let d = seed::delivery(seed::event_with("message.received", 1, data), "ops");
    let message: Value = serde_json::from_slice(&t.render(&d)).unwrap();
    slack_limits::check(&message).unwrap();
    assert_eq!(
        message["blocks"][0]["text"]["text"],
        "message.received for A&B"
    );
    let body = "*A&amp;B* wrote: hi &lt;there&gt; (<https://crm.example/c/c-1|open>)";
    assert_eq!(message["blocks"][1]["text"]["text"], body);
    assert_eq!(message["text"], body);
    assert_eq!(message["blocks"][2]["type"], "context");
}
