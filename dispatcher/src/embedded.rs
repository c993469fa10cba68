//! The embedded Kafka: librdkafka's mock cluster, started in-process when
//! no `kafka.brokers` is configured, so the dispatcher and its demo run on a
//! machine with nothing installed.
//!
//! It speaks the real Kafka protocol over TCP on 127.0.0.1, so other local
//! clients (kcat, the load tester) can use it too. It keeps everything in
//! memory and drops a partition's oldest data past a few MiB: a development
//! and test tool, never a production broker.

use anyhow::{anyhow, Context};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

pub struct EmbeddedKafka {
    /// The mock cluster lives exactly as long as the client that made it.
    owner: BaseProducer,
    bootstrap: String,
}

impl EmbeddedKafka {
    /// Start a one-broker cluster with `topics`, each of `partitions`.
    pub fn start(topics: &[&str], partitions: i32) -> anyhow::Result<EmbeddedKafka> {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            // The owner never produces; keep its own logging quiet.
            .set("log_level", "3")
            .create()
            .context("starting the embedded Kafka (librdkafka mock cluster)")?;
        let mock = owner
            .client()
            .mock_cluster()
            .ok_or_else(|| anyhow!("librdkafka did not create a mock cluster"))?;
        for topic in topics {
            mock.create_topic(topic, partitions, 1)
                .with_context(|| format!("creating topic {topic} in the embedded Kafka"))?;
        }
        let bootstrap = mock.bootstrap_servers();
        drop(mock);
        // SAFETY: the pointer comes from a live client that owns the mock
        // cluster and outlives this call; the setter only stores an integer.
        // Without it a new consumer group waits 3 s before its first
        // assignment, which only slows development and tests.
        unsafe {
            let cluster = rdkafka_sys::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            if !cluster.is_null() {
                rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            }
        }
        Ok(EmbeddedKafka { owner, bootstrap })
    }

    /// `bootstrap.servers` for clients of this cluster.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Take the broker down (`false`) or bring it back (`true`): for tests of
    /// broker outages.
    pub fn set_broker_up(&self, up: bool) -> anyhow::Result<()> {
        let mock = self
            .owner
            .client()
            .mock_cluster()
            .ok_or_else(|| anyhow!("the embedded Kafka is gone"))?;
        if up {
            mock.broker_up(1)?;
        } else {
            mock.broker_down(1)?;
        }
        Ok(())
    }

    /// Answer the next `count` requests of `api` with `error`: for tests of
    /// the errors a real cluster can return (authorization, say).
    pub fn fail_requests(
        &self,
        api: rdkafka_sys::types::RDKafkaApiKey,
        error: rdkafka_sys::types::RDKafkaRespErr,
        count: usize,
    ) -> anyhow::Result<()> {
        let mock = self
            .owner
            .client()
            .mock_cluster()
            .ok_or_else(|| anyhow!("the embedded Kafka is gone"))?;
        mock.request_errors(api, &vec![error; count]);
        Ok(())
    }

    /// Create another topic (the mock cluster has no admin API for it).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let mock = self
            .owner
            .client()
            .mock_cluster()
            .ok_or_else(|| anyhow!("the embedded Kafka is gone"))?;
        mock.create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic} in the embedded Kafka"))
    }
}
