//! Shared parts of the transport integration tests: seed events of every
//! documented type, Slack's limits as a checker, and a real broker (tansu).
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod seed;
pub mod slack_limits;
pub mod tansu;

use std::collections::BTreeMap;
use std::time::Duration;

use transports::http::{HttpClient, HttpClientOptions};
use transports::BuildContext;

/// What a test needs to hand factories a [`BuildContext`].
pub struct Ctx {
    pub http: HttpClient,
    pub kafka_bootstrap: String,
    pub kafka_options: BTreeMap<String, String>,
    pub allow_private_networks: bool,
    pub timeout: Duration,
    pub endpoint_id: String,
}

impl Ctx {
    pub fn new(kafka_bootstrap: &str, allow_private_networks: bool) -> Ctx {
        Ctx {
            http: HttpClient::new(HttpClientOptions {
                allow_private_networks,
                native_roots: false,
                ..HttpClientOptions::default()
            })
            .expect("http client"),
            kafka_bootstrap: kafka_bootstrap.to_owned(),
            kafka_options: BTreeMap::new(),
            allow_private_networks,
            timeout: Duration::from_secs(10),
            endpoint_id: "test-endpoint".into(),
        }
    }

    pub fn get(&self) -> BuildContext<'_> {
        BuildContext {
            endpoint_id: &self.endpoint_id,
            timeout: self.timeout,
            http: &self.http,
            kafka_bootstrap: &self.kafka_bootstrap,
            kafka_options: &self.kafka_options,
            allow_private_networks: self.allow_private_networks,
            kafka_guard: Default::default(),
        }
    }
}
