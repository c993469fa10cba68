//! librdkafka client settings shared by every Kafka client the dispatcher
//! makes, and the few it insists on.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// A record header's value as text, if present and UTF-8.
pub fn header_str<'m, M: Message>(msg: &'m M, name: &str) -> Option<&'m str> {
    header_bytes(msg, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// The value of header `name`, byte for byte (a record key need not be text).
pub fn header_bytes<'m, M: Message>(msg: &'m M, name: &str) -> Option<&'m [u8]> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// What a Kafka error means for whoever met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// No retry can fix it and nothing can go on without it: the client is
    /// dead (librdkafka's fatal errors) or the cluster refuses us
    /// (authorization) or a topic we need is gone. The process must stop.
    Fatal,
    /// This one record can never be written (too large, invalid): it must
    /// go elsewhere (dead-lettered), but everything else goes on.
    Permanent,
    /// Worth retrying: brokers down, leaders moving, timeouts, queue full.
    Transient,
}

/// Classify a Kafka error (see [`Severity`]).
pub fn classify(error: &KafkaError) -> Severity {
    use RDKafkaErrorCode as C;
    let Some(code) = error.rdkafka_error_code() else {
        return Severity::Transient;
    };
    match code {
        C::Fatal
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnknownTopic
        | C::UnknownTopicOrPartition
        | C::TopicDeletionDisabled
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::UnsupportedForMessageFormat
        | C::InvalidConfig => Severity::Fatal,
        C::MessageSizeTooLarge | C::InvalidRecord | C::InvalidMessage | C::InvalidMessageSize => {
            Severity::Permanent
        }
        _ => Severity::Transient,
    }
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
    // all by default: more read-ahead than the source ever needs, and memory
    // that grows with the partition count. Cap it unless asked otherwise.
    for (key, default) in [
        ("queued.max.messages.kbytes", "16384"),
        ("queued.min.messages", "10000"),
        // librdkafka's 45 s is how long a crashed replica's partitions wait
        // before another replica takes them over, and some brokers (tansu)
        // hold a new group's first JoinGroup for half of it: 23 s from
        // start to first delivery there, 5 s with 10 s (broker_e2e.rs,
        // start_up_to_first_delivery_against_a_bare_consumer). 10 s was
        // Kafka's default before 3.0 and is Vector's; heartbeats run on
        // librdkafka's own thread (every 3 s), so a busy dispatcher never
        // misses one.
        ("session.timeout.ms", "10000"),
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

/// A consumer that reads from the positions it is given (assign, never
/// subscribe: it joins no group) and never commits: an endpoint's backlog
/// reader (`purpose` "backlog": the group consumer's commits cover what it
/// hands over) or the endpoint store's follower ("store": it reads the
/// whole topic at every start). librdkafka still wants a group id for an
/// assigned consumer.
pub fn reader(kafka: &KafkaConfig, bootstrap: &str, purpose: &str) -> ClientConfig {
    let mut c = base(kafka, bootstrap, &format!("webhook-dispatcher-{purpose}"));
    c.set("group.id", format!("{}.{purpose}", kafka.group_id));
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.set("enable.partition.eof", "false");
    // A reader hands over only what its lane has room for: a small
    // prefetch is plenty, and bounded per reader.
    for (key, default) in [
        ("queued.max.messages.kbytes", "2048"),
        ("queued.min.messages", "1000"),
        ("fetch.wait.max.ms", "100"),
        // With queue thresholds this small, librdkafka's default 1 s pause
        // after the queue was full left a reader idle most of the time: a
        // spilled backlog drained at a tenth of the pace the same events
        // flow fresh (tests/backlog_drain.rs).
        ("fetch.queue.backoff.ms", "10"),
        ("auto.offset.reset", "earliest"),
    ] {
        if !kafka.options.contains_key(key) {
            c.set(key, default);
        }
    }
    // Group settings from kafka.options mean nothing to it.
    for key in [
        "group.instance.id",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        // Without its session.timeout.ms, a user's max.poll.interval.ms below
        // the default session timeout would make librdkafka refuse the client.
        "max.poll.interval.ms",
        "statistics.interval.ms",
    ] {
        c.remove(key);
    }
    c
}

/// An admin client (creating and checking the dispatcher's own topics).
pub fn admin(kafka: &KafkaConfig, bootstrap: &str) -> ClientConfig {
    let mut c = base(kafka, bootstrap, "webhook-dispatcher-admin");
    // Consumer- and producer-only options would each make it warn.
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
        "linger.ms",
        "acks",
        "enable.idempotence",
        "statistics.interval.ms",
    ] {
        c.remove(key);
    }
    c
}

/// The producer of dead letters, parked and spilled deliveries: idempotent
/// with full acknowledgement, since each of those writes lets the source
/// offset move past its record.
pub fn producer(kafka: &KafkaConfig, bootstrap: &str, max_event_bytes: usize) -> ClientConfig {
    let mut c = base(kafka, bootstrap, "webhook-dispatcher-producer");
    // Room for the largest record we accept plus the headers we add, so
    // parking or dead-lettering an accepted event is never refused locally.
    let max_message = (max_event_bytes + 256 * 1024).max(1_000_000);
    // librdkafka refuses a record larger than its whole queue (QueueFull,
    // every time): room for two of the largest, at least 16 MiB.
    let queue_kbytes = (2 * max_message / 1024).max(16 * 1024).to_string();
    let max_message = max_message.to_string();
    for (key, default) in [
        ("acks", "all"),
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("message.max.bytes", max_message.as_str()),
        // Its queue holds dead letters, parked and spilled deliveries until
        // they are acknowledged: bounded well below librdkafka's 1 GiB
        // default. A full queue makes the source wait for acknowledgements,
        // which is the back-pressure a spill needs; 16 MiB still batches
        // thousands of records per request.
        ("queue.buffering.max.kbytes", queue_kbytes.as_str()),
        // A missing dead-letter, retry or spill topic is a configuration error to
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
        // The consumer's lag figures; the producer would only log its own.
        "statistics.interval.ms",
    ] {
        c.remove(key);
    }
    c
}

/// What the unit tests of the records the dispatcher writes share.
#[cfg(test)]
pub(crate) mod testing {
    use bytes::Bytes;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
    use transports::{Event, SourceRef};

    /// `raw` decoded as read from `events`, partition 1, offset 12, with a
    /// record key that is not UTF-8 (a key is bytes).
    pub fn keyed_event(raw: &'static [u8]) -> Event {
        let source = SourceRef {
            topic: "events".into(),
            partition: 1,
            offset: 12,
        };
        let mut event = Event::decode(Bytes::from_static(raw), source, Some(0), 1 << 20).unwrap();
        event.record_key = Some(Bytes::from_static(&[0xff, 0x00, b'k']));
        event
    }

    /// A record of `topic` as a consumer would read it back.
    pub fn read_back<K: AsRef<str>, V: AsRef<[u8]>>(
        topic: &str,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(K, V)],
    ) -> OwnedMessage {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k.as_ref(),
                value: Some(v.as_ref()),
            })
        });
        OwnedMessage::new(
            Some(value.to_vec()),
            key.map(<[u8]>::to_vec),
            topic.into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            1,
            Some(headers),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_can_fix_them() {
        use RDKafkaErrorCode as C;
        let produce = |c| KafkaError::MessageProduction(c);
        assert_eq!(classify(&produce(C::Fatal)), Severity::Fatal);
        assert_eq!(
            classify(&produce(C::TopicAuthorizationFailed)),
            Severity::Fatal
        );
        assert_eq!(
            classify(&produce(C::UnknownTopicOrPartition)),
            Severity::Fatal
        );
        assert_eq!(
            classify(&produce(C::MessageSizeTooLarge)),
            Severity::Permanent
        );
        assert_eq!(classify(&produce(C::InvalidRecord)), Severity::Permanent);
        assert_eq!(classify(&produce(C::QueueFull)), Severity::Transient);
        assert_eq!(classify(&produce(C::MessageTimedOut)), Severity::Transient);
        assert_eq!(classify(&produce(C::AllBrokersDown)), Severity::Transient);
        assert_eq!(
            classify(&KafkaError::MessageConsumption(C::GroupAuthorizationFailed)),
            Severity::Fatal
        );
    }

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
        assert_eq!(
            c.get("session.timeout.ms"),
            Some("6000"),
            "the user's session timeout wins over the default"
        );
        let default = consumer(&KafkaConfig::default(), "b:9092");
        assert_eq!(default.get("session.timeout.ms"), Some("10000"));
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

    /// librdkafka creates the group consumer and both kinds of reader
    /// from these options (it checks their combinations at creation).
    fn librdkafka_accepts_every_consumer(k: &KafkaConfig) {
        for purpose in ["store", "backlog"] {
            let made: Result<rdkafka::consumer::BaseConsumer, _> =
                reader(k, "127.0.0.1:9", purpose).create();
            assert!(made.is_ok(), "{purpose} reader: {:?}", made.err());
        }
        let group: Result<rdkafka::consumer::BaseConsumer, _> = consumer(k, "127.0.0.1:9").create();
        assert!(group.is_ok(), "{:?}", group.err());
    }

    #[test]
    fn a_short_poll_interval_for_the_group_does_not_break_the_readers() {
        // A session timeout and poll interval tuned for the group consumer:
        // the readers join no group, and librdkafka must still accept them.
        let mut k = KafkaConfig::default();
        for (key, value) in [
            ("session.timeout.ms", "6000"),
            ("max.poll.interval.ms", "15000"),
        ] {
            k.options
                .insert(key.into(), crate::config::Scalar(value.into()));
        }
        librdkafka_accepts_every_consumer(&k);
    }

    #[test]
    fn the_producer_queue_always_holds_the_largest_record() {
        let k = KafkaConfig::default();
        let small = producer(&k, "b:9092", 1 << 20);
        assert_eq!(small.get("queue.buffering.max.kbytes"), Some("16384"));
        // librdkafka refuses a record larger than the whole queue every
        // time, which would stall the source on that spill or park write.
        let big = producer(&k, "b:9092", 20 << 20);
        let queue_kb: usize = big
            .get("queue.buffering.max.kbytes")
            .and_then(|v| v.parse().ok())
            .expect("a queue size");
        let record: usize = big
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .expect("a record size");
        assert!(
            queue_kb * 1024 >= 2 * record,
            "{queue_kb} KiB for {record} B records"
        );
    }

    #[test]
    fn a_large_message_max_bytes_is_accepted_by_every_consumer() {
        // librdkafka sizes a fetch from the prefetch queue unless
        // fetch.max.bytes is given, and then requires it to be at least
        // message.max.bytes: a default for it would refuse this option.
        let mut k = KafkaConfig::default();
        k.options.insert(
            "message.max.bytes".into(),
            crate::config::Scalar("10000000".into()),
        );
        librdkafka_accepts_every_consumer(&k);
    }

    #[test]
    fn readers_fetch_again_soon_after_their_small_queue_was_full() {
        let k = KafkaConfig::default();
        for purpose in ["store", "backlog"] {
            let c = reader(&k, "b:9092", purpose);
            assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"), "{purpose}");
        }
        let mut k = KafkaConfig::default();
        k.options.insert(
            "fetch.queue.backoff.ms".into(),
            crate::config::Scalar("250".into()),
        );
        assert_eq!(
            reader(&k, "b:9092", "backlog").get("fetch.queue.backoff.ms"),
            Some("250"),
            "the user's choice wins"
        );
    }
}
