//! The sink fed known traffic reports known numbers: deliveries, losses,
//! duplicates, dead letters, unexpected ids and bad signatures, with
//! requests signed by the official `standardwebhooks` crate; and each fault
//! kind answers as documented.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loadtest::ledger::{Ledger, Tally};
use loadtest::produce::Expectations;
use loadtest::sink::faults::{Fault, FaultKind};
use loadtest::sink::{Sink, SinkEndpoint};
use loadtest::workload::{EndpointRoute, Routing, Workload, DEFAULT_SECRET};
use transports::DeliveryId;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// POST `body` to `url`, signed for `id` with `secret` by the official library.
async fn post(
    client: &HttpClient,
    url: &str,
    id: &str,
    event_type: &str,
    body: Bytes,
    secret: &str,
) -> Result<(u16, Option<String>), String> {
    let ts = chrono::Utc::now().timestamp();
    let signature = standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(id, ts, &body)
        .unwrap();
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("x-webhook-event", event_type)
        .header("x-webhook-delivery-id", id)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(Full::new(body))
        .unwrap();
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, retry_after))
}

fn route(id: &str, events: &[&str]) -> EndpointRoute {
    EndpointRoute {
        id: id.into(),
        events: events.iter().map(|s| s.to_string()).collect(),
        filter: Default::default(),
        tenant: None,
    }
}

fn endpoint(id: &str, faults: Vec<Fault>) -> SinkEndpoint {
    SinkEndpoint {
        id: id.into(),
        secrets: vec![DEFAULT_SECRET.into()],
        healthy: faults.is_empty(),
        faults,
        port: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_known_numbers() {
    let routes = [route("all", &["*"]), route("msgs", &["message.*"])];
    let ledger = Arc::new(Ledger::new(2, 10_000));
    let expectations = Expectations::new(Routing::new(&routes).unwrap(), ledger.clone());
    let sink = Sink::start(
        vec![endpoint("all", vec![]), endpoint("msgs", vec![])],
        1,
        0,
        ledger.clone(),
    )
    .unwrap();

    // 24 events: two of each of the 12 types; 12 of them are message.*.
    let mut workload = Workload::new(42);
    let records: Vec<_> = (0..24).map(|_| workload.next_record()).collect();
    for r in &records {
        expectations.register(r);
    }
    assert_eq!(expectations.per_endpoint(), [24, 12]);

    let c = client();
    let mut routing = Routing::new(&routes).unwrap();
    let mut expected = Vec::new();
    let mut sent = 0;
    let mut skipped = Vec::new();
    for (n, r) in records.iter().enumerate() {
        let event = r.decode().unwrap();
        routing.expected(&event, &mut expected);
        for e in &expected {
            let id = e.id.to_string();
            let body = event.envelope(&routes[e.endpoint].id);
            let url = sink.url(e.endpoint);
            // Event 5 is never sent to anyone (a loss per subscriber);
            // event 7 is dead-lettered instead of sent.
            if n == 5 || n == 7 {
                skipped.push(e.id);
                continue;
            }
            let times = if n % 6 == 0 { 2 } else { 1 }; // events 0, 6, 12, 18 twice
            for _ in 0..times {
                let (status, _) = post(&c, &url, &id, r.event_type, body.clone(), DEFAULT_SECRET)
                    .await
                    .unwrap();
                assert_eq!(status, 200);
                sent += 1;
            }
        }
    }
    // Event 7 (contact.updated) goes to `all` only: the dispatcher gave up on it.
    let ev7 = records[7].decode().unwrap();
    ledger.dead_lettered(DeliveryId::derive(&ev7, "all"));

    // A delivery under an id nothing expected, and one with a bad signature.
    let ev = records[1].decode().unwrap();
    let stray = DeliveryId::derive(&ev, "someone-else").to_string();
    let (status, _) = post(
        &c,
        &sink.url(0),
        &stray,
        ev.event_type(),
        ev.envelope("all"),
        DEFAULT_SECRET,
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, _) = post(
        &c,
        &sink.url(0),
        &DeliveryId::derive(&ev, "all").to_string(),
        ev.event_type(),
        ev.envelope("all"),
        "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk=",
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
    // An envelope addressed to another endpoint is refused.
    let (status, _) = post(
        &c,
        &sink.url(1),
        &DeliveryId::derive(&ev, "msgs").to_string(),
        ev.event_type(),
        ev.envelope("all"),
        DEFAULT_SECRET,
    )
    .await
    .unwrap();
    assert_eq!(status, 400);

    let s = ledger.summary();
    // Event 0 (message.received) and 6 (contact.created), 12, 18 went twice:
    // events 0 and 12 are message.* and reach both endpoints.
    assert_eq!(
        s.endpoints[0],
        Tally {
            expected: 24,
            delivered: 22,
            duplicates: 4,
            dead_lettered: 1,
            lost: 1,
            unexpected: 1,
            ..Tally::default()
        }
    );
    assert_eq!(
        s.endpoints[1],
        Tally {
            expected: 12,
            delivered: 11,
            duplicates: 2,
            lost: 1,
            ..Tally::default()
        }
    );
    assert_eq!(ledger.progress(), (36, 34));
    let counts = sink.counts();
    assert_eq!(counts[0].bad_signature, 1);
    assert_eq!(counts[1].bad_request, 1);
    assert_eq!(
        counts[0].accepted + counts[1].accepted,
        sent + 1,
        "every 2xx is counted"
    );
    assert_eq!(counts[0].duplicates, 4);
    assert_eq!(skipped.len(), 3);
    // Ages were measured for first acceptances (and the stray one).
    assert_eq!(sink.total_ages().len(), 22 + 11 + 1);
}

fn fault(kind: FaultKind) -> Fault {
    Fault {
        kind,
        ratio: 1.0,
        from: None,
        until: None,
        latency: None,
        status: None,
        retry_after: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_answer_as_documented() {
    let mut slow = fault(FaultKind::Latency);
    slow.latency = Some(Duration::from_millis(200));
    let mut throttle = fault(FaultKind::Throttle);
    throttle.retry_after = Some(Duration::from_secs(3));
    let mut error = fault(FaultKind::Error);
    error.status = Some(503);
    let mut later = fault(FaultKind::Gone);
    later.from = Some(Duration::from_secs(3600)); // never active in this test
    let eps = vec![
        endpoint("slow", vec![slow]),
        endpoint("throttled", vec![throttle]),
        endpoint("failing", vec![error]),
        endpoint("gone", vec![fault(FaultKind::Gone)]),
        endpoint("reset", vec![fault(FaultKind::Reset)]),
        endpoint("hang", vec![fault(FaultKind::Hang)]),
        endpoint("down", vec![fault(FaultKind::Refuse)]),
        endpoint("later", vec![later]),
    ];
    let ledger = Arc::new(Ledger::new(eps.len(), 1000));
    // Two shared listeners: the faults of a receiver that shares one act on
    // its requests only; `reset` and `down` get listeners of their own.
    let sink = Sink::start(eps, 1, 2, ledger).unwrap();
    sink.set_epoch(Instant::now());
    sink.set_faults(true);

    let c = client();
    let ev = Workload::new(1).next_record().decode().unwrap();
    let send = |i: usize| {
        let id = sink.endpoint_id(i).to_owned();
        let url = sink.url(i);
        let c = c.clone();
        let ev = ev.clone();
        async move {
            let d = DeliveryId::derive(&ev, &id).to_string();
            post(
                &c,
                &url,
                &d,
                ev.event_type(),
                ev.envelope(&id),
                DEFAULT_SECRET,
            )
            .await
        }
    };

    let started = Instant::now();
    assert_eq!(send(0).await.unwrap().0, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(send(1).await.unwrap(), (429, Some("3".into())));
    assert_eq!(send(2).await.unwrap().0, 503);
    assert_eq!(send(3).await.unwrap().0, 410);
    assert!(send(4).await.is_err(), "reset: no answer");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), send(5))
            .await
            .is_err(),
        "hang: still waiting"
    );
    // Down: give the listener a poll to close, then connections are refused.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = tokio::net::TcpStream::connect(sink.addr(6)).await;
    assert!(refused.is_err(), "down: connection refused");
    assert_eq!(send(7).await.unwrap().0, 200);

    let counts = sink.counts();
    let fired = |i: usize, k: FaultKind| counts[i].faults[k.index()];
    assert_eq!(fired(0, FaultKind::Latency), 1);
    assert_eq!(fired(1, FaultKind::Throttle), 1);
    assert_eq!(fired(2, FaultKind::Error), 1);
    assert_eq!(fired(3, FaultKind::Gone), 1);
    assert_eq!(fired(4, FaultKind::Reset), 1);
    assert_eq!(fired(5, FaultKind::Hang), 1);
    assert_eq!(counts[7].faults.iter().sum::<u64>(), 0);
    assert_eq!(counts[0].accepted + counts[7].accepted, 2);

    // With faults off (as for the ceiling) everything is accepted again.
    sink.set_faults(false);
    for i in [1, 2, 3] {
        assert_eq!(send(i).await.unwrap().0, 200, "endpoint {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_sharing_a_listener_are_told_apart_by_path() {
    let ids = ["a", "b", "c", "d", "e"];
    let mut eps: Vec<SinkEndpoint> = ids.iter().map(|id| endpoint(id, vec![])).collect();
    eps.push(endpoint("down", vec![fault(FaultKind::Refuse)]));
    let ledger = Arc::new(Ledger::new(eps.len(), 1000));
    let sink = Sink::start(eps, 1, 2, ledger.clone()).unwrap();
    // Round robin over the two shared listeners; the refusing one alone.
    assert_eq!(sink.addr(0), sink.addr(2));
    assert_eq!(sink.addr(1), sink.addr(3));
    assert_ne!(sink.addr(0), sink.addr(1));
    for shared in 0..5 {
        assert_ne!(sink.addr(5), sink.addr(shared));
    }

    let c = client();
    let ev = Workload::new(3).next_record().decode().unwrap();
    for (i, id) in ids.iter().enumerate().take(4) {
        let d = DeliveryId::derive(&ev, id).to_string();
        let (status, _) = post(
            &c,
            &sink.url(i),
            &d,
            ev.event_type(),
            ev.envelope(id),
            DEFAULT_SECRET,
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{id}");
    }
    // A path names its receiver on any shared listener; an unknown path on
    // a shared listener is nobody's.
    let d = DeliveryId::derive(&ev, "b").to_string();
    let post_b = |url: String| {
        let (c, d, ev) = (c.clone(), d.clone(), ev.clone());
        async move {
            post(
                &c,
                &url,
                &d,
                ev.event_type(),
                ev.envelope("b"),
                DEFAULT_SECRET,
            )
            .await
            .unwrap()
            .0
        }
    };
    let b_on_a = sink
        .url(1)
        .replace(&sink.addr(1).to_string(), &sink.addr(0).to_string());
    assert_eq!(post_b(b_on_a).await, 200);
    let stray = format!("http://{}/webhooks/nobody", sink.addr(0));
    assert_eq!(post_b(stray).await, 404);
    assert_eq!(sink.misrouted(), 1);

    let counts = sink.counts();
    let accepted: Vec<u64> = counts.iter().map(|c| c.accepted).collect();
    assert_eq!(accepted, [1, 2, 1, 1, 0, 0]);
    // Connections to shared listeners belong to no one receiver.
    assert!(counts[..5].iter().all(|c| c.connections == 0));
}
