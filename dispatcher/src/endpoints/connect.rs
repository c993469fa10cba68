//! Building endpoints' transports: at once when an endpoint is added (which
//! checks its settings and starts what must run, such as a Kafka
//! producer), and again by its lane whenever it has work, for transports
//! that are dropped while their lane rests (see [`LaneTransport`]).

use std::collections::BTreeMap;
use std::sync::Arc;

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

impl Builder {
    pub fn build(&self, ep: &EndpointConfig) -> anyhow::Result<Arc<dyn Transport>> {
        let factory = self
            .registry
            .get(&ep.transport)
            .ok_or_else(|| anyhow!("endpoint {}: unknown transport `{}`", ep.id, ep.transport))?;
        let mut ctx =
            self.config
                .build_context(&ep.id, ep.timeout, &self.client, &self.kafka_options);
        ctx.kafka_bootstrap = &self.bootstrap;
        factory
            .build(&ep.settings_value(), &ctx)
            .map_err(|e| anyhow!("endpoint {}: {}: {}", ep.id, e.field, e.reason))
    }

    /// The transport of `ep` for its lane: built now, and kept, or dropped
    /// and built again by the lane when it has work.
    pub fn lane_transport(
        self: &Arc<Self>,
        ep: &Arc<EndpointConfig>,
    ) -> anyhow::Result<LaneTransport> {
        let built = self.build(ep)?;
        Ok(LaneTransport::new(built, || {
            Arc::new(OnDemand {
                builder: self.clone(),
                endpoint: ep.clone(),
            })
        }))
    }
}

/// One endpoint's transport, built again from the endpoint the manager
/// keeps (shared, not copied).
struct OnDemand {
    builder: Arc<Builder>,
    endpoint: Arc<EndpointConfig>,
}

impl Connect for OnDemand {
    fn connect(&self) -> Result<Arc<dyn Transport>, String> {
        self.builder
            .build(&self.endpoint)
            .map_err(|e| e.to_string())
    }
}
