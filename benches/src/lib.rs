//! Reusable parts of the dispatcher's benchmarks.
//!
//! - [`workload`]: seed records, the envelopes endpoints receive, and a
//!   realistic mix of subscriptions (shared with the criterion benches);
//! - [`sink`]: a single-threaded local webhook receiver that counts;
//! - [`fanout`]: the real dispatcher against an embedded, pre-filled Kafka;
//!
//! The baseline client is the load tester's (`loadtest::bare`).
//! The `fanout-vs-bare` binary puts them together.

pub mod fanout;
pub mod sink;
pub mod workload;
