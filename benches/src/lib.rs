//! Reusable parts of the dispatcher's benchmarks.
//!
//! - [`workload`]: seed records, the envelopes endpoints receive, and a
//!   realistic mix of subscriptions (shared with the criterion benches);
//! - [`sink`]: a single-threaded local webhook receiver that counts;
//! - [`fanout`]: the real dispatcher against an embedded, pre-filled Kafka;
//! - [`bare`]: the baseline, a plain hyper client sending the same bodies;
//!
//! The `fanout-vs-bare` binary puts them together.

pub mod bare;
pub mod fanout;
pub mod sink;
pub mod workload;
