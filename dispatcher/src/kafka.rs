//! librdkafka client settings shared by every Kafka client the dispatcher
//! makes, and the few it insists on.

use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// A record header's value as text, if present and UTF-8.
pub fn header_str<'m, M: Message>(msg: &'m M, name: &str) -> Option<&'m str> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Properties common to every client: brokers, then the user's options.
fn base(kafka: &KafkaConfig, bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c.set("client.id", client_id);
    for (key, value) in &kafka.options {
        c.set(key, &value.0);
    }
    c
}

/// The source consumer. Offsets are stored and committed by the dispatcher
/// only (never automatically), which is what makes at-least-once hold.
pub fn consumer(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = base(kafka, bootstrap, "webhook-dispatcher");
    c.set("group.id", &kafka.group_id);
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    // librdkafka prefetches up to 100k records per partition and 64 MiB in
    // all by default: more than the in-flight budget ever needs, and memory
    // that grows with the partition count. Cap it unless asked otherwise.
    for (key, default) in [
        ("queued.max.messages.kbytes", "16384"),
        ("queued.min.messages", "10000"),
    ] {
        if !kafka.options.contains_key(key) {
            c.set(key, default);
        }
    }
    if !kafka.options.contains_key("statistics.interval.ms") {
        // Consumer lag per partition, for dispatcher_consumer_lag.
        c.set("statistics.interval.ms", "5000");
    }
    if !kafka.options.contains_key("auto.offset.reset") {
        // A new group must not skip the events already waiting.
        c.set("auto.offset.reset", "earliest");
    }
    c
}

/// The producer of dead letters and parked deliveries: idempotent with full
/// acknowledgement, since either write lets the source offset move past its
/// record.
pub fn producer(kafka: &KafkaConfig, bootstrap: &str, max_event_bytes: usize) -> ClientConfig {
    let mut c = base(kafka, bootstrap, "webhook-dispatcher-producer");
    // Room for the largest record we accept plus the headers we add, so
    // parking or dead-lettering an accepted event is never refused locally.
    let max_message = (max_event_bytes + 256 * 1024).max(1_000_000).to_string();
    for (key, default) in [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("message.max.bytes", max_message.as_str()),
        // Its queue holds dead letters and parked deliveries until they are
        // acknowledged: bounded well below librdkafka's 1 GiB default.
        ("queue.buffering.max.kbytes", "65536"),
        // A missing dead-letter or retry topic is a configuration error to
        // report at start-up, never a topic to create by accident.
        ("allow.auto.create.topics", "false"),
    ] {
        if !kafka.options.contains_key(key) {
            c.set(key, default);
        }
    }
    // Consumer-only options given under kafka.options would make the
    // producer log a warning each; drop the obvious ones.
    for key in [
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "auto.offset.reset",
        "partition.assignment.strategy",
        "fetch.min.bytes",
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "group.instance.id",
        "isolation.level",
    ] {
        c.remove(key);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Managed Kafka needs TLS, SASL/SCRAM and the common codecs: make sure
    /// the librdkafka we link was built with them.
    #[test]
    fn librdkafka_has_tls_scram_and_codecs() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        for needed in ["ssl", "sasl_scram", "zstd", "lz4", "gzip"] {
            assert!(
                features.split(',').any(|f| f == needed),
                "missing {needed} in {features}"
            );
        }
    }

    #[test]
    fn user_options_cannot_turn_auto_commit_on() {
        let mut k = KafkaConfig::default();
        k.options
            .insert("linger.ms".into(), crate::config::Scalar("7".into()));
        k.options.insert(
            "session.timeout.ms".into(),
            crate::config::Scalar("6000".into()),
        );
        let c = consumer(&k, "b:9092");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("session.timeout.ms"), Some("6000"));
        let p = producer(&k, "b:9092", 1 << 20);
        assert_eq!(
            p.get("linger.ms"),
            Some("7"),
            "user options win over producer defaults"
        );
        assert_eq!(
            p.get("session.timeout.ms"),
            None,
            "consumer-only options stay off the producer"
        );
        assert_eq!(p.get("acks"), Some("all"));
    }
}
