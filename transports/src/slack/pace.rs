//! Slack's pace: at most one message per second per webhook URL, with a
//! small burst.
//!
//! This module owns the process-wide [`Gate`] of each webhook URL. Endpoints
//! that share a URL share its gate (Slack counts per URL, not per endpoint),
//! so the map is keyed by URL; an entry lives as long as a transport holds
//! it. The dispatcher's own per-endpoint `rate_limit` is separate and
//! applies before a send even starts.
//!
//! A gate hands out send slots in arrival order (a fair lock in front of the
//! token bucket), so concurrent sends to one channel go out in the order
//! they were issued; and when Slack answers 429 it closes for `Retry-After`,
//! so the other senders to that URL wait too instead of collecting 429s.
//!
//! A 429 also restarts the pace. The refused message spent a slot that Slack
//! did not count, and the gate reopens later than that slot plus
//! `Retry-After` (Slack's answer takes a while to arrive). Were the next
//! sends to take the slots already scheduled, the second one after the
//! reopening would go out less than a period after the first, be refused in
//! turn, and so on: every other message. So the first send after a 429
//! waits until the whole burst is available and takes all of it, which puts
//! the send after it a full period later.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// Slack's documented pace for incoming webhooks: one message a second.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Messages that may go at once after a quiet spell ("short bursts are
/// allowed"); kept small so a strict receiver answers few 429s.
pub const BURST: u32 = 2;

/// One webhook URL's pace.
pub struct Gate {
    limiter: DefaultDirectRateLimiter,
    /// Fair (FIFO) lock: who is next to take a token.
    turn: tokio::sync::Mutex<()>,
    /// Sends waiting for their turn or a token, for a Retry-After estimate.
    waiting: AtomicUsize,
    /// What a 429 from Slack left behind.
    closed: Mutex<Closed>,
}

#[derive(Default)]
struct Closed {
    /// Nobody sends before then.
    until: Option<Instant>,
    /// The next send restarts the pace (takes the whole burst).
    restart: bool,
}

/// A send that could not get a slot before its deadline: try again after
/// `retry_after` (the expected wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSlot {
    pub retry_after: Duration,
}

impl Gate {
    fn new() -> Gate {
        let quota = Quota::with_period(PERIOD)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN));
        Gate {
            limiter: RateLimiter::direct(quota),
            turn: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            closed: Mutex::default(),
        }
    }

    /// Wait for this URL's next send slot, until `deadline` at the latest.
    pub async fn acquire(&self, deadline: Instant) -> Result<(), NoSlot> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.turn.lock()).await else {
            return Err(self.no_slot(PERIOD));
        };
        loop {
            let now = Instant::now();
            let wait = match self.closed_for(now) {
                Some(wait) => wait,
                None => match self.take_slot() {
                    Ok(()) => return Ok(()),
                    Err(not_until) => not_until.wait_time_from(DefaultClock::default().now()),
                },
            };
            if now + wait > deadline {
                return Err(self.no_slot(wait));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// One send's token; after a 429, the whole burst (see the module's
    /// documentation). Only the holder of the turn calls this.
    fn take_slot(&self) -> Result<(), governor::NotUntil<<DefaultClock as Clock>::Instant>> {
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if !closed.restart {
            return self.limiter.check();
        }
        let burst = NonZeroU32::new(BURST).unwrap_or(NonZeroU32::MIN);
        // The whole burst always fits the quota: the fallback cannot happen.
        let taken = self
            .limiter
            .check_n(burst)
            .unwrap_or_else(|_| self.limiter.check());
        if taken.is_ok() {
            closed.restart = false;
        }
        taken
    }

    /// Slack said 429: nobody sends to this URL for `pause`, and the pace
    /// starts afresh after it.
    pub fn close_for(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        if closed.until.is_none_or(|t| t < until) {
            closed.until = Some(until);
        }
        closed.restart = true;
    }

    fn closed_for(&self, now: Instant) -> Option<Duration> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        closed.until.filter(|t| *t > now).map(|t| t - now)
    }

    /// The wait to suggest: at least the known wait, and a period for each
    /// send queued ahead.
    fn no_slot(&self, wait: Duration) -> NoSlot {
        let queued = self.waiting.load(Ordering::Acquire).max(1) as u32;
        NoSlot {
            retry_after: wait.max(PERIOD * queued.min(600)),
        }
    }
}

/// Counts a waiter for as long as it waits (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The gate of `url`, shared with every other transport sending there.
pub fn gate_for(url: &str) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<String, Weak<Gate>>>> = OnceLock::new();
    let mut gates = GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(gate) = gates.get(url).and_then(Weak::upgrade) {
        return gate;
    }
    // Forget URLs no transport uses any more (config reloads).
    gates.retain(|_, gate| gate.strong_count() > 0);
    let gate = Arc::new(Gate::new());
    gates.insert(url.to_owned(), Arc::downgrade(&gate));
    gate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gate_per_url_while_in_use() {
        let a = gate_for("https://hooks.slack.com/services/T/B/one");
        let b = gate_for("https://hooks.slack.com/services/T/B/one");
        let c = gate_for("https://hooks.slack.com/services/T/B/two");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[tokio::test]
    async fn paces_after_the_burst_and_gives_up_at_the_deadline() {
        let gate = Gate::new();
        let start = Instant::now();
        let far = start + Duration::from_secs(10);
        for _ in 0..BURST {
            gate.acquire(far).await.unwrap();
        }
        assert!(start.elapsed() < Duration::from_millis(500));
        gate.acquire(far).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );

        // No token before a near deadline: told how long to wait instead.
        let no = gate
            .acquire(Instant::now() + Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(no.retry_after >= Duration::from_millis(500), "{no:?}");

        gate.close_for(Duration::from_secs(5));
        let no = gate
            .acquire(Instant::now() + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(no.retry_after >= Duration::from_secs(4), "{no:?}");
    }
}
