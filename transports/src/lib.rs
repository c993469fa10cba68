//! Delivery transports for the webhook dispatcher.
//!
//! This crate owns three things: the *delivery model* that every transport
//! sees (a decoded [`Event`], one [`Delivery`] of it to one endpoint, and the
//! [`Outcome`] of one send), the plugin point ([`registry`]: transport
//! factories found by their `transport:` type name), and the built-in
//! transports themselves ([`http`], [`kafka`], [`slack`]). The dispatcher
//! core decides *when* to send and what to do with an outcome (retry,
//! dead-letter, commit); a transport only turns one delivery into one send
//! and says how it went.

pub mod de;
pub mod http;
pub mod json;
pub mod kafka;
pub mod model;
pub mod registry;
pub mod seed;
pub mod slack;

pub use model::{Delivery, DeliveryId, Event, EventError, SourceRef};
pub use registry::{BuildContext, Registry, SettingsError, TransportFactory};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed, sendable future: the price of one allocation per send buys a
/// trait that can be stored as `Arc<dyn Transport>` and picked by config.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How one send went, as classified by the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted the delivery.
    Delivered { status: Option<u16> },
    /// A transient failure: try again later, no sooner than `retry_after`
    /// when the receiver asked for a pause.
    Retry {
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help. `disable_endpoint` is set when the receiver
    /// said it wants no more deliveries at all (HTTP 410 Gone; a Slack
    /// webhook whose channel or app is gone).
    Permanent {
        status: Option<u16>,
        reason: String,
        disable_endpoint: bool,
    },
    /// The receiver asked for a pause (a rate limit such as Slack's 429):
    /// wait `retry_after` and send again *without* spending a retry attempt.
    Throttled {
        status: Option<u16>,
        reason: String,
        retry_after: Duration,
    },
    /// Retrying cannot help: the receiver refused the payload itself as
    /// invalid. `sent` is what was sent, when the transport rendered its own
    /// (Slack's message), so the dead letter shows it.
    Rejected {
        status: Option<u16>,
        reason: String,
        sent: bytes::Bytes,
    },
}

impl Outcome {
    /// A short, bounded label for metrics (`delivered`, `retry`,
    /// `permanent`, `throttled`, `rejected`).
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Permanent { .. } => "permanent",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Rejected { .. } => "rejected",
        }
    }

    /// The same outcome with its reason passed through `f` (transports use
    /// it to scrub secrets from whatever a receiver echoed back).
    pub fn map_reason(self, f: impl FnOnce(String) -> String) -> Outcome {
        match self {
            Outcome::Delivered { status } => Outcome::Delivered { status },
            Outcome::Retry {
                status,
                reason,
                retry_after,
            } => Outcome::Retry {
                status,
                reason: f(reason),
                retry_after,
            },
            Outcome::Permanent {
                status,
                reason,
                disable_endpoint,
            } => Outcome::Permanent {
                status,
                reason: f(reason),
                disable_endpoint,
            },
            Outcome::Throttled {
                status,
                reason,
                retry_after,
            } => Outcome::Throttled {
                status,
                reason: f(reason),
                retry_after,
            },
            Outcome::Rejected {
                status,
                reason,
                sent,
            } => Outcome::Rejected {
                status,
                reason: f(reason),
                sent,
            },
        }
    }

    /// The HTTP-like status the receiver answered with, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status }
            | Outcome::Retry { status, .. }
            | Outcome::Permanent { status, .. }
            | Outcome::Throttled { status, .. }
            | Outcome::Rejected { status, .. } => *status,
        }
    }
}

/// One configured destination's way of sending deliveries.
///
/// An instance belongs to one endpoint and holds that endpoint's settings
/// (URL, secrets, timeout) plus handles to shared connection resources, so a
/// slow endpoint only ever occupies its own sends.
pub trait Transport: Send + Sync + 'static {
    /// The `transport:` type name this instance was built from (metrics label).
    fn kind(&self) -> &'static str;

    /// Send one delivery once and classify the result. Must not panic and
    /// must finish within the endpoint's own timeout.
    fn send<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome>;

    /// Whether dropping this instance while its endpoint has nothing to
    /// send, and building it again from the same settings when it has,
    /// loses nothing and costs little: true when it holds only what its
    /// settings say, not state of its own (a token, a connection pool of
    /// its own, a producer, pacing). A replica with 100,000 endpoints keeps
    /// such transports only for the ones at work.
    fn rebuilt_cheaply(&self) -> bool {
        false
    }
}
