//! A lane's transport: kept for the endpoint's lifetime, or built when the
//! lane has work and dropped when it rests.
//!
//! Most HTTP endpoints' transports hold nothing but their parsed settings
//! (URL, headers, signing keys; connections are the shared client's), yet
//! cost over a kilobyte each. At 100,000 endpoints, mostly idle, keeping
//! them all would be most of a replica's memory, so a transport that says
//! it is [rebuilt cheaply](transports::Transport::rebuilt_cheaply) lives
//! only while its lane runs a task. Others (an OAuth2 token, a client of
//! its own, a Kafka producer, Slack pacing) are kept.

use std::sync::Arc;

use transports::Transport;

/// Builds one endpoint's transport from its settings, as often as asked.
pub trait Connect: Send + Sync + 'static {
    /// The transport, or why it could not be built (the same settings built
    /// one when the endpoint was added, so this is not expected).
    fn connect(&self) -> Result<Arc<dyn Transport>, String>;
}

/// Where a lane gets its transport.
#[derive(Clone)]
pub enum LaneTransport {
    /// Built once, kept.
    Kept(Arc<dyn Transport>),
    /// Built by the lane when it has work.
    OnDemand(Arc<dyn Connect>),
}

impl LaneTransport {
    /// `built`, kept if it must be; otherwise dropped, and `connect` builds
    /// it again when needed.
    pub fn new(built: Arc<dyn Transport>, connect: impl FnOnce() -> Arc<dyn Connect>) -> Self {
        if built.rebuilt_cheaply() {
            LaneTransport::OnDemand(connect())
        } else {
            LaneTransport::Kept(built)
        }
    }

    pub fn connect(&self) -> Result<Arc<dyn Transport>, String> {
        match self {
            LaneTransport::Kept(t) => Ok(t.clone()),
            LaneTransport::OnDemand(c) => c.connect(),
        }
    }
}
