//! Building endpoints' transports: at once when an endpoint is added (which
//! checks its settings and starts what must run, such as a Kafka
//! producer), and again by its lane whenever it has work, for transports
//! that are dropped while their lane rests (see [`LaneTransport`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use transports::http::HttpClient;
use transports::{Registry, Transport};

use crate::config::{Config, EndpointConfig};
use crate::lane::{Connect, LaneTransport};

/// What building a transport takes besides the endpoint.
pub struct Builder {
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub client: HttpClient,
    pub kafka_options: BTreeMap<String, String>,
    pub bootstrap: String,
}

/// What an endpoint's transport is built from, kept compactly: a replica
/// keeps one per endpoint (100,000 of them, mostly idle), where the
/// endpoint's parsed config would cost a kilobyte or more (a JSON map of
/// one key allocates a whole B-tree node).
#[derive(Debug, PartialEq)]
pub struct TransportSpec {
    id: Box<str>,
    transport: Box<str>,
    timeout: Duration,
    /// The transport's own keys, as JSON text (the map's keys are sorted,
    /// so equal settings give equal text).
    settings: Box<str>,
}

impl TransportSpec {
    pub fn of(ep: &EndpointConfig) -> TransportSpec {
        TransportSpec {
            id: ep.id.as_str().into(),
            transport: ep.transport.as_str().into(),
            timeout: ep.timeout,
            settings: ep.settings_value().to_string().into_boxed_str(),
        }
    }
}

impl Builder {
    pub fn build(&self, spec: &TransportSpec) -> anyhow::Result<Arc<dyn Transport>> {
        let id = &*spec.id;
        let factory = self
            .registry
            .get(&spec.transport)
            .ok_or_else(|| anyhow!("endpoint {id}: unknown transport `{}`", spec.transport))?;
        let settings: serde_json::Value = serde_json::from_str(&spec.settings)
            .map_err(|e| anyhow!("endpoint {id}: its settings do not read back: {e}"))?;
        let mut ctx =
            self.config
                .build_context(id, spec.timeout, &self.client, &self.kafka_options);
        ctx.kafka_bootstrap = &self.bootstrap;
        factory
            .build(&settings, &ctx)
            .map_err(|e| anyhow!("endpoint {id}: {}: {}", e.field, e.reason))
    }

    /// The transport of `spec` for its lane: built now, and kept, or
    /// dropped and built again by the lane when it has work.
    pub fn lane_transport(
        self: &Arc<Self>,
        spec: &Arc<TransportSpec>,
    ) -> anyhow::Result<LaneTransport> {
        let built = self.build(spec)?;
        Ok(LaneTransport::new(built, || {
            Arc::new(OnDemand {
                builder: self.clone(),
                spec: spec.clone(),
            })
        }))
    }
}

/// One endpoint's transport, built again from the spec the manager keeps
/// (shared, not copied).
struct OnDemand {
    builder: Arc<Builder>,
    spec: Arc<TransportSpec>,
}

impl Connect for OnDemand {
    fn connect(&self) -> Result<Arc<dyn Transport>, String> {
        self.builder.build(&self.spec).map_err(|e| e.to_string())
    }
}
