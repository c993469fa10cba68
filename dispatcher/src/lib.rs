//! The webhook fan-out dispatcher: Kafka events in, signed and retried
//! deliveries out, offsets committed only behind final deliveries.
//!
//! The modules follow the data flow:
//! [`source`] (consumer, back-pressure) → [`route`] (subscriptions) →
//! [`lane`] (one endpoint's queue, in-flight cap, retries) → a transport
//! (`transports` crate) → [`dlq`] for what cannot be delivered, with
//! [`offsets`] keeping the commit watermark honest throughout.

pub mod admin;
pub mod api;
pub mod app;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod embedded;
pub mod kafka;
pub mod lane;
pub mod metrics;
pub mod offsets;
pub mod park;
pub mod replay;
pub mod route;
/// Realistic events of every documented type (they live with the delivery model).
pub use transports::seed;
pub mod source;
