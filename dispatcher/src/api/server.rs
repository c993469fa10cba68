//! The HTTP/1.1 accept loop both listeners share (`admin.listen` and
//! `api.listen`), with the limits that keep a few bad clients from taking
//! a listener away from everyone else: a cap on open connections, a bound
//! on reading a request's headers (slowloris), and a bound on how long one
//! connection may live.
//!
//! HTTP/1.1 only: Prometheus, the kubelet's probes and curl speak it, and
//! one protocol means one set of timeouts to reason about.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// What one listener tolerates.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; one more is closed at once, unanswered.
    pub max_connections: usize,
    /// A request's headers must have arrived this soon after the client
    /// started sending them.
    pub header_read_timeout: Duration,
    /// A connection is closed this long after it was accepted (a request
    /// under way gets a few more seconds): what bounds a client that
    /// trickles a body or idles on keep-alive.
    pub max_connection_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(60),
        }
    }
}

/// How long a connection past its age may finish the request under way.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The client's address, as an extension of every request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Serve `service` on `listener` until `shutdown` turns true. `name` labels
/// log lines (`admin`, `api`).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    name: &'static str,
    mut shutdown: watch::Receiver<bool>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    // Out of file descriptors, typically: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Closing at once, rather than leaving the client in the kernel's
        // backlog, keeps the listener's answer time honest under a flood and
        // tells the client to go away.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(listener = name, %peer, "connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(Peer(peer));
                service.call(request)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(64 * 1024);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = tokio::time::sleep(limits.max_connection_age) => {
                    // Let a request under way finish (a scrape in progress
                    // at the wrong moment), but not for long.
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(CLOSE_GRACE, connection).await {
                        Ok(result) => result,
                        Err(_) => Ok(()),
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
            }
        });
    }
}
