//! The dispatcher's load tester, as a library for the `loadtest` binary and
//! for tests. [`bare`] and [`procstat`] generalise `benches/src/{bare,cpu}.rs`
//! (headers, a fixed rate and latency; any process, RSS), so that the
//! benchmarks can move onto them.
//!
//! - [`workload`]: seed events with microsecond send timestamps, and the
//!   deliveries each must cause (routing as the dispatcher routes);
//! - [`produce`]: writing them into Kafka at a rate, registering expectations;
//! - [`sink`]: local webhook receivers that verify signatures, measure
//!   end-to-end age and inject faults ([`sink::faults`], [`sink::verify`]);
//! - [`ledger`]: delivery-id accounting: losses, duplicates, dead letters;
//! - [`deadletters`]: reading the dead-letter topic into the ledger;
//! - [`broker`]: the embedded or given Kafka and the run's topics;
//! - [`fleet`]: the `dispatcher` binary as child processes (kill -9, /proc);
//! - [`scrape`]: the dispatchers' own metrics (spill, backlog) during a run;
//! - [`bare`]: the ceiling, a bare hyper client;
//! - [`scenario`]: the YAML scenario format and the shipped scenarios;
//! - [`run`]: the runner that puts it all together;
//! - [`report`]: text, JSON and HTML reports;
//! - [`procstat`], [`stats`]: CPU and memory from `/proc`; percentiles.

pub mod bare;
pub mod broker;
pub mod deadletters;
pub mod fleet;
pub mod ledger;
pub mod procstat;
pub mod produce;
pub mod report;
pub mod run;
pub mod scenario;
pub mod scrape;
pub mod sink;
pub mod stats;
pub mod workload;
