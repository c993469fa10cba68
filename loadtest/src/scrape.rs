//! The dispatchers' own view of a run, read from their `/metrics`: what
//! each endpoint spilled to Kafka, brought back, and has waiting there, how
//! far the source has been read, and the dispatch latency histogram (read
//! to 2xx, the dispatcher's own share of the age).
//!
//! Counters restart at zero when a child is killed and started again; the
//! [`Tracker`] adds up what each process counted, so totals cover the run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// One scrape of one process: the series the load tester reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Per endpoint id.
    pub endpoints: HashMap<String, EndpointMetrics>,
    /// `dispatcher_events_consumed_total` per topic.
    pub consumed: HashMap<String, f64>,
    /// `dispatcher_dispatch_latency_seconds_bucket`, every transport
    /// together: (upper bound, cumulative count), by bound.
    pub dispatch: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EndpointMetrics {
    pub spilled: f64,
    pub drained: f64,
    pub backlog: f64,
    pub oldest_age_s: f64,
}

/// `GET /metrics` from a dispatcher's admin address; `None` when it does
/// not answer within a second or two (a child being restarted).
pub async fn fetch(admin: SocketAddr) -> Option<Scrape> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: dispatcher\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| parse(body))
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| parse(body)))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// The series we read out of Prometheus' text format.
pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        if name == "dispatcher_dispatch_latency_seconds_bucket" {
            let le = match label("le").as_deref() {
                Some("+Inf") => f64::INFINITY,
                Some(le) => match le.parse::<f64>() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
                None => continue,
            };
            match out.dispatch.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += value,
                None => out.dispatch.push((le, value)),
            }
            continue;
        }
        let field: fn(&mut EndpointMetrics) -> &mut f64 = match name {
            "dispatcher_spilled_total" => |m| &mut m.spilled,
            "dispatcher_backlog_drained_total" => |m| &mut m.drained,
            "dispatcher_endpoint_backlog_deliveries" => |m| &mut m.backlog,
            "dispatcher_endpoint_backlog_oldest_age_seconds" => |m| &mut m.oldest_age_s,
            "dispatcher_events_consumed_total" => {
                if let Some(topic) = label("topic") {
                    *out.consumed.entry(topic).or_default() += value;
                }
                continue;
            }
            _ => continue,
        };
        if let Some(ep) = label("endpoint") {
            *field(out.endpoints.entry(ep).or_default()) = value;
        }
    }
    out.dispatch.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Quantiles read off a Prometheus histogram's buckets, interpolated
/// linearly within a bucket as `histogram_quantile` does: exact to the
/// bucket, no closer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BucketQuantiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Dispatch latency between two snapshots of [`Tracker::dispatch`]
/// (cumulative counts by bound); `None` when nothing was observed.
pub fn dispatch_between(start: &[(f64, f64)], end: &[(f64, f64)]) -> Option<BucketQuantiles> {
    let delta: Vec<(f64, f64)> = end
        .iter()
        .map(|&(le, n)| {
            let before = start.iter().find(|(b, _)| *b == le).map_or(0.0, |s| s.1);
            (le, (n - before).max(0.0))
        })
        .collect();
    let total = delta.last()?.1;
    if total < 1.0 {
        return None;
    }
    let at = |q: f64| {
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, n) in &delta {
            if n >= rank {
                if le.is_infinite() {
                    // Beyond the last finite bound: that bound is all we know.
                    return lower.0 * 1000.0;
                }
                let within = if n > lower.1 {
                    (rank - lower.1) / (n - lower.1)
                } else {
                    1.0
                };
                return (lower.0 + (le - lower.0) * within) * 1000.0;
            }
            lower = (le, n);
        }
        lower.0 * 1000.0
    };
    Some(BucketQuantiles {
        count: total as u64,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
    })
}

/// What the run learned from the dispatchers' metrics, per endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EndpointTotals {
    /// Deliveries written to the spill topic, over every process.
    pub spilled: u64,
    /// Deliveries brought back from the backlog in Kafka.
    pub backlog_drained: u64,
    /// Most deliveries waiting in Kafka at once (summed over processes).
    pub backlog_peak: u64,
    /// Longest the oldest of them had waited, at any scrape.
    pub backlog_oldest_age_max_s: f64,
}

/// Adds up scrapes of several processes over a run, across restarts.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Last counter values per (process index, endpoint).
    last: HashMap<(usize, String), (f64, f64)>,
    totals: HashMap<String, EndpointTotals>,
    /// The latest scrape of each process.
    latest: HashMap<usize, Scrape>,
    /// The dispatch latency buckets, every process and restart together.
    dispatch: Vec<(f64, f64)>,
}

impl Tracker {
    /// Take in one round of scrapes, `(process index, scrape)`.
    pub fn update(&mut self, round: &[(usize, Scrape)]) {
        let mut backlog: HashMap<&str, f64> = HashMap::new();
        for (process, scrape) in round {
            for (ep, m) in &scrape.endpoints {
                let t = self.totals.entry(ep.clone()).or_default();
                let (last_spilled, last_drained) = self
                    .last
                    .insert((*process, ep.clone()), (m.spilled, m.drained))
                    .unwrap_or((0.0, 0.0));
                // A counter below its last value: the process restarted.
                let delta = |now: f64, last: f64| if now >= last { now - last } else { now };
                t.spilled += delta(m.spilled, last_spilled) as u64;
                t.backlog_drained += delta(m.drained, last_drained) as u64;
                t.backlog_oldest_age_max_s = t.backlog_oldest_age_max_s.max(m.oldest_age_s);
                *backlog.entry(ep.as_str()).or_default() += m.backlog;
            }
            let last = self.latest.get(process).map(|s| s.dispatch.as_slice());
            for &(le, n) in &scrape.dispatch {
                let before = last
                    .and_then(|l| l.iter().find(|(b, _)| *b == le))
                    .map_or(0.0, |b| b.1);
                // Below its last value: the process restarted.
                let delta = if n >= before { n - before } else { n };
                match self.dispatch.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, total)) => *total += delta,
                    None => {
                        self.dispatch.push((le, delta));
                        self.dispatch.sort_by(|a, b| a.0.total_cmp(&b.0));
                    }
                }
            }
            self.latest.insert(*process, scrape.clone());
        }
        for (ep, b) in backlog {
            if let Some(t) = self.totals.get_mut(ep) {
                t.backlog_peak = t.backlog_peak.max(b as u64);
            }
        }
    }

    pub fn endpoint(&self, id: &str) -> EndpointTotals {
        self.totals.get(id).copied().unwrap_or_default()
    }

    /// Deliveries waiting in Kafka now, every endpoint and process together,
    /// and the oldest one's wait.
    pub fn backlog_now(&self) -> (f64, f64) {
        let mut total = 0.0;
        let mut oldest: f64 = 0.0;
        for s in self.latest.values() {
            for m in s.endpoints.values() {
                total += m.backlog;
                oldest = oldest.max(m.oldest_age_s);
            }
        }
        (total, oldest)
    }

    /// Deliveries of endpoint `id` waiting in Kafka now, every process together.
    pub fn backlog_of(&self, id: &str) -> f64 {
        self.latest
            .values()
            .filter_map(|s| s.endpoints.get(id))
            .map(|m| m.backlog)
            .sum()
    }

    /// Events of `topic` the processes consumed, by their latest scrapes
    /// (a restarted process counts again from zero: a lower bound).
    pub fn consumed(&self, topic: &str) -> f64 {
        self.latest
            .values()
            .filter_map(|s| s.consumed.get(topic))
            .sum()
    }

    /// The dispatch latency buckets so far (cumulative by bound), for
    /// [`dispatch_between`].
    pub fn dispatch(&self) -> Vec<(f64, f64)> {
        self.dispatch.clone()
    }

    /// Spilled deliveries over every endpoint.
    pub fn spilled(&self) -> u64 {
        self.totals.values().map(|t| t.spilled).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP dispatcher_spilled_total Deliveries written.
# TYPE dispatcher_spilled_total counter
dispatcher_spilled_total{endpoint="slow"} 120
dispatcher_spilled_total{endpoint="fast"} 0
dispatcher_backlog_drained_total{endpoint="slow"} 20
dispatcher_endpoint_backlog_deliveries{endpoint="slow"} 100
dispatcher_endpoint_backlog_oldest_age_seconds{endpoint="slow"} 4.5
dispatcher_events_consumed_total{topic="loadtest.x"} 1000
dispatcher_deliveries_total{endpoint="slow",outcome="delivered",transport="http"} 7
dispatcher_dispatch_latency_seconds_bucket{transport="http",le="0.01"} 50
dispatcher_dispatch_latency_seconds_bucket{transport="http",le="0.02"} 90
dispatcher_dispatch_latency_seconds_bucket{transport="http",le="+Inf"} 100
dispatcher_dispatch_latency_seconds_bucket{transport="kafka",le="0.01"} 0
dispatcher_dispatch_latency_seconds_bucket{transport="kafka",le="0.02"} 0
dispatcher_dispatch_latency_seconds_bucket{transport="kafka",le="+Inf"} 0
"#;

    #[test]
    fn reads_the_series_it_needs() {
        let s = parse(TEXT);
        assert_eq!(
            s.endpoints["slow"],
            EndpointMetrics {
                spilled: 120.0,
                drained: 20.0,
                backlog: 100.0,
                oldest_age_s: 4.5
            }
        );
        assert_eq!(s.endpoints["fast"].spilled, 0.0);
        assert_eq!(s.consumed["loadtest.x"], 1000.0);
        assert_eq!(
            s.dispatch,
            vec![(0.01, 50.0), (0.02, 90.0), (f64::INFINITY, 100.0)]
        );
    }

    #[test]
    fn dispatch_quantiles_come_from_the_bucket_deltas() {
        let start = vec![(0.01, 10.0), (0.02, 10.0), (f64::INFINITY, 10.0)];
        // 100 more: 40 under 10 ms, 50 in 10-20 ms, 10 beyond.
        let end = vec![(0.01, 50.0), (0.02, 100.0), (f64::INFINITY, 110.0)];
        let q = dispatch_between(&start, &end).unwrap();
        assert_eq!(q.count, 100);
        // The 50th of 100 is the 10th of the 50 in 10-20 ms.
        assert!((q.p50_ms - 12.0).abs() < 1e-9, "{q:?}");
        // The 99th is beyond the last finite bound: that bound.
        assert_eq!(q.p99_ms, 20.0);
        assert_eq!(dispatch_between(&end, &end), None);
    }

    #[test]
    fn totals_survive_a_restart() {
        let mut t = Tracker::default();
        t.update(&[(0, parse(TEXT))]);
        // The process restarted and counted 30 more spills since.
        let again = TEXT.replace("} 120", "} 30").replace("} 100", "} 300");
        t.update(&[(0, parse(&again))]);
        let slow = t.endpoint("slow");
        assert_eq!(slow.spilled, 150);
        assert_eq!(slow.backlog_peak, 300);
        assert_eq!(slow.backlog_oldest_age_max_s, 4.5);
        assert_eq!(t.backlog_now(), (300.0, 4.5));
        assert_eq!(t.backlog_of("slow"), 300.0);
        assert_eq!(t.spilled(), 150);
        // The dispatch buckets went from 100 to 300 observations, then the
        // process restarted and observed 40.
        assert_eq!(t.dispatch().last(), Some(&(f64::INFINITY, 300.0)));
        let restarted = TEXT
            .replace("} 50", "} 20")
            .replace("} 90", "} 30")
            .replace("} 100", "} 40");
        t.update(&[(0, parse(&restarted))]);
        assert_eq!(t.dispatch().last(), Some(&(f64::INFINITY, 340.0)));
        assert_eq!(t.dispatch().first(), Some(&(0.01, 70.0)));
    }
}
