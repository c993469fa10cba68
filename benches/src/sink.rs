//! The webhook sink both sides of a comparison send to: a single-threaded
//! HTTP/1.1 server on its own thread and its own current-thread runtime, so
//! that it costs the same for every client and never competes with the
//! client's runtime for worker threads. It reads each body, answers `200` at
//! once and counts what it saw.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The name of the sink's thread (for CPU accounting).
pub const THREAD_NAME: &str = "webhook-sink";

/// What the sink has seen so far.
#[derive(Debug, Default)]
pub struct SinkStats {
    requests: AtomicU64,
    body_bytes: AtomicU64,
    connections: AtomicU64,
}

/// A copy of [`SinkStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SinkCounts {
    pub requests: u64,
    pub body_bytes: u64,
    /// TCP connections accepted: far more than the client's concurrency
    /// means connections are not being kept alive and reused.
    pub connections: u64,
}

impl SinkStats {
    pub fn snapshot(&self) -> SinkCounts {
        SinkCounts {
            requests: self.requests.load(Ordering::Relaxed),
            body_bytes: self.body_bytes.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
        }
    }
}

impl SinkCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: SinkCounts) -> SinkCounts {
        SinkCounts {
            requests: self.requests - earlier.requests,
            body_bytes: self.body_bytes - earlier.body_bytes,
            connections: self.connections - earlier.connections,
        }
    }
}

/// A running sink; stops (and joins its thread) when dropped.
pub struct Sink {
    addr: SocketAddr,
    stats: Arc<SinkStats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Bind `127.0.0.1:0` and start serving on a thread of its own.
    pub fn start() -> anyhow::Result<Sink> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the sink listener")?;
        listener
            .set_nonblocking(true)
            .context("making the sink listener non-blocking")?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the sink's runtime")?;
        let stats = Arc::new(SinkStats::default());
        let (stop, stopped) = oneshot::channel();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                if let Err(e) = runtime.block_on(serve(listener, thread_stats, stopped)) {
                    eprintln!("sink: {e:#}");
                }
            })
            .context("starting the sink thread")?;
        Ok(Sink {
            addr,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    stats: Arc<SinkStats>,
    mut stopped: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener).context("registering the sink listener")?;
    loop {
        tokio::select! {
            _ = &mut stopped => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nodelay(true);
                    let stats = stats.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| answer(req, stats.clone()));
                        // A client closing its connection is not news.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of file descriptors and the like: back off, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    stats: Arc<SinkStats>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let bytes = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len() as u64,
        Err(_) => 0,
    };
    stats.body_bytes.fetch_add(bytes, Ordering::Relaxed);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    Ok(Response::new(Empty::new()))
}
