//! A real webhook receiver on 127.0.0.1 that records every request and can
//! be told how to answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 at once.
    Ok,
    /// Answer with this status.
    Status(u16),
    /// Never answer.
    Hang,
    /// 429 with `Retry-After: secs` to the first `times` requests, then 200.
    Throttle { times: usize, secs: u64 },
    /// 429 with `Retry-After: secs` to the first attempt of every delivery
    /// id, 200 to later ones.
    ThrottleFirst { secs: u64 },
    /// 200 after this many milliseconds: healthy, but slow.
    Delay { ms: u64 },
    /// After `delay_ms`, 503 (without `Retry-After`) to the first attempt
    /// of one delivery id in `one_in` (chosen by a hash of the id), 200 to
    /// the rest.
    FailFirst { one_in: u64, delay_ms: u64 },
    /// 503 to every request whose body contains `needle`, for `ms` from the
    /// first of them; 200 to everything else.
    Hiccup { needle: &'static str, ms: u64 },
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Clone)]
pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
    arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
    /// When each delivery id was first attempted.
    first_attempts: Arc<Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    /// Requests being answered now, and the most there were at once.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    most_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// When the first request a `Hiccup` fails came.
    hiccup_from: Arc<Mutex<Option<std::time::Instant>>>,
}

impl Sink {
    pub async fn start(behaviour: Behaviour) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let sink = Sink {
            addr: listener.local_addr().unwrap(),
            received: Default::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            attempts: Default::default(),
            arrivals: Default::default(),
            first_attempts: Default::default(),
            in_flight: Default::default(),
            most_in_flight: Default::default(),
            hiccup_from: Default::default(),
        };
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| s.clone().handle(req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        sink
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Requests answered with a 2xx.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The raw `data` of the distinct events accepted on `path`.
    pub fn data_at(&self, path: &str) -> std::collections::BTreeSet<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| super::raw_data(&r.body))
            .collect()
    }

    /// Every request that arrived, whatever the answer.
    pub fn attempts(&self) -> usize {
        self.attempts.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When each delivery id was first attempted.
    pub fn first_attempt(&self, delivery_id: &str) -> Option<std::time::Instant> {
        self.first_attempts
            .lock()
            .unwrap()
            .get(delivery_id)
            .copied()
    }

    /// The most requests it was answering at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When each request arrived, whatever the answer.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.arrivals.lock().unwrap().clone()
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let n = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let now_in_flight = self
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        self.most_in_flight
            .fetch_max(now_in_flight, std::sync::atomic::Ordering::SeqCst);
        self.arrivals
            .lock()
            .unwrap()
            .push(std::time::Instant::now());
        let at = std::time::Instant::now();
        let behaviour = *self.behaviour.lock().unwrap();
        let path = req.uri().path().to_owned();
        let headers = req.headers().clone();
        let delivery_id = headers
            .get("x-webhook-delivery-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let first = match headers
            .get("x-webhook-delivery-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) => {
                let mut seen = self.first_attempts.lock().unwrap();
                let first = !seen.contains_key(id);
                seen.entry(id.to_owned()).or_insert(at);
                first
            }
            None => true,
        };
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut retry_after = None;
        let status = match behaviour {
            Behaviour::Ok => 200,
            Behaviour::Throttle { times, secs } if n < times => {
                retry_after = Some(secs);
                429
            }
            Behaviour::Throttle { .. } => 200,
            Behaviour::ThrottleFirst { secs } if first => {
                retry_after = Some(secs);
                429
            }
            Behaviour::ThrottleFirst { .. } => 200,
            Behaviour::Delay { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                200
            }
            Behaviour::FailFirst { one_in, delay_ms } => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                delivery_id.hash(&mut h);
                match first && h.finish() % one_in == 0 {
                    true => 503,
                    false => 200,
                }
            }
            Behaviour::Hiccup { needle, ms } => {
                let hit = body.windows(needle.len()).any(|w| w == needle.as_bytes());
                let mut from = self.hiccup_from.lock().unwrap();
                match hit {
                    true if from.get_or_insert(at).elapsed() < Duration::from_millis(ms) => 503,
                    _ => 200,
                }
            }
            Behaviour::Status(s) => s,
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                200
            }
        };
        if (200..300).contains(&status) {
            self.received.lock().unwrap().push(Received {
                path,
                headers,
                body,
                at: std::time::Instant::now(),
            });
        }
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"{\"received\":true}")));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(secs) = retry_after {
            r.headers_mut().insert("retry-after", secs.into());
        }
        Ok(r)
    }
}
