//! The webhook fan-out dispatcher: Kafka events in, signed and retried
//! deliveries out, offsets committed only behind final deliveries.
//!
//! The modules follow the data flow:
//! [`source`] (consumer, memory budget) → [`route`] (subscriptions) →
//! [`lane`] (one endpoint's inbox, rate limit, in-flight cap, breaker,
//! retries) → a transport (`transports` crate) → [`dlq`] for what cannot be
//! delivered. A lane that cannot keep up has its backlog moved to Kafka by
//! [`spill`], and brought back at its own pace by [`backlog`]; [`park`]
//! keeps retries waiting in Kafka. [`offsets`] keeps the commit watermark
//! honest throughout, and [`fatal`] stops the process on faults no retry
//! fixes.

pub mod admin;
pub mod alloc;
pub mod api;
pub mod app;
pub mod backlog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod embedded;
pub mod endpoints;
pub mod fatal;
pub mod kafka;
pub mod lane;
pub mod metrics;
pub mod offsets;
pub mod park;
pub mod replay;
pub mod route;
pub mod secrets;
/// Realistic events of every documented type (they live with the delivery model).
pub use transports::seed;
pub mod source;
pub mod spill;
pub mod store;
pub mod topics;
