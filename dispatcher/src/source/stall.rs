//! The stall rule's bookkeeping: how long the memory budget has held the
//! source back (a "pause" below, whether or not the consumer's partitions
//! are paused yet), and whether the lanes still holding fresh deliveries
//! spill (see [`Source::spill_stalled`](super::Source)).
//!
//! Every `spill_after` of one pause is a stall check. The lanes holding
//! fresh deliveries spill at a check when they are a minority: at most half
//! of the lanes that take deliveries, or at most twice the lanes that keep
//! up and wait for the source. Other endpoints, idle or waiting, may have
//! events behind the pause. When most lanes hold fresh work and almost none
//! waits, every endpoint is behind alike (a backlog drain at the receivers'
//! pace): the pause is back-pressure, and spilling them all would copy the
//! whole backlog to the spill topic and back (docs/benchmarks.md,
//! many-tenants). That patience is bounded by `pipeline.stall_grace`
//! `spill_after`s: of one pause, and, while some lanes keep up and wait
//! (one for every four holding), of the checks added up over the pauses
//! that follow each other. A majority slow alike (three rate-limited
//! endpoints beside one fast one) thus holds the others that long at most,
//! even when each of its pauses is short. The sum starts again once the
//! source has read unpaused for `spill_after`.

use std::time::Duration;

use tokio::time::Instant;

/// What a stall check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No lane holds fresh deliveries: what holds the budget is elsewhere
    /// (sends in flight, retries, writes to Kafka).
    NothingFresh,
    /// The holders spill.
    Spill,
    /// Most lanes are behind alike: they wait.
    Wait,
}

impl Verdict {
    /// The `outcome` label of `dispatcher_budget_stalls_total`.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::NothingFresh => "nothing_fresh",
            Verdict::Spill => "spilled",
            Verdict::Wait => "waited",
        }
    }
}

pub struct Stall {
    spill_after: Duration,
    grace: Duration,
    /// The current pause began then; `None` while reading.
    pause_began: Option<Instant>,
    /// The last stall check of this pause, or its start.
    checked: Option<Instant>,
    /// When the source last resumed.
    resumed_at: Option<Instant>,
    /// Checks that waited while lanes were waiting, added up.
    held: Duration,
}

impl Stall {
    pub fn new(spill_after: Duration, grace: u32) -> Stall {
        Stall {
            spill_after,
            grace: spill_after.saturating_mul(grace),
            pause_began: None,
            checked: None,
            resumed_at: None,
            held: Duration::ZERO,
        }
    }

    /// The source is paused, or reading, at `now`.
    pub fn observe(&mut self, paused: bool, now: Instant) {
        match (paused, self.pause_began) {
            (true, None) => {
                if self
                    .resumed_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= self.spill_after)
                {
                    self.held = Duration::ZERO;
                }
                self.pause_began = Some(now);
                self.checked = Some(now);
            }
            (false, Some(_)) => {
                self.pause_began = None;
                self.checked = None;
                self.resumed_at = Some(now);
            }
            _ => {}
        }
    }

    /// When the next stall check is due, while paused.
    pub fn deadline(&self) -> Option<Instant> {
        self.checked.map(|at| at + self.spill_after)
    }

    /// A check at `now`: `holding` lanes with fresh deliveries out of
    /// `lanes` that take deliveries, `waiting` lanes keeping up.
    pub fn check(&mut self, now: Instant, holding: usize, lanes: usize, waiting: usize) -> Verdict {
        let interval = self
            .checked
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let paused_for = self
            .pause_began
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.checked = Some(now);
        if holding == 0 {
            return Verdict::NothingFresh;
        }
        let minority = holding * 2 <= lanes || holding <= waiting * 2;
        if !minority && waiting * 4 >= holding {
            self.held += interval;
        }
        if minority || paused_for >= self.grace || self.held >= self.grace {
            self.held = Duration::ZERO;
            Verdict::Spill
        } else {
            Verdict::Wait
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(2);

    #[test]
    fn a_minority_spills_at_the_first_check() {
        let t = Instant::now();
        let mut stall = Stall::new(S, 3);
        stall.observe(true, t);
        assert_eq!(stall.deadline(), Some(t + S));
        // One slow lane beside an idle one; two slow beside one waiting;
        // dozens of slow endpoints among a thousand.
        assert_eq!(stall.check(t + S, 1, 2, 0), Verdict::Spill);
        assert_eq!(stall.check(t + 2 * S, 2, 3, 1), Verdict::Spill);
        assert_eq!(stall.check(t + 3 * S, 40, 1000, 0), Verdict::Spill);
        assert_eq!(stall.check(t + 4 * S, 0, 1000, 0), Verdict::NothingFresh);
    }

    #[test]
    fn lanes_behind_alike_wait_for_the_grace_of_one_pause() {
        let t = Instant::now();
        let mut stall = Stall::new(S, 3);
        stall.observe(true, t);
        // A drain at the receivers' pace: nearly every lane holds work.
        assert_eq!(stall.check(t + S, 9_600, 10_000, 300), Verdict::Wait);
        assert_eq!(stall.check(t + 2 * S, 9_600, 10_000, 300), Verdict::Wait);
        assert_eq!(stall.check(t + 3 * S, 9_600, 10_000, 300), Verdict::Spill);
    }

    #[test]
    fn short_pauses_of_a_drain_never_add_up_without_lanes_waiting() {
        let t = Instant::now();
        let mut stall = Stall::new(S, 3);
        let mut now = t;
        for _ in 0..100 {
            stall.observe(true, now);
            now += S;
            assert_eq!(stall.check(now, 9_600, 10_000, 300), Verdict::Wait);
            now += Duration::from_millis(500);
            stall.observe(false, now);
            now += Duration::from_millis(10);
        }
    }

    #[test]
    fn a_slow_majority_holding_a_waiting_lane_spills_over_short_pauses() {
        let t = Instant::now();
        let mut stall = Stall::new(S, 3);
        let mut now = t;
        let mut verdicts = Vec::new();
        // Three slow lanes, one fast lane waiting; pauses of 1.5 spill_afters
        // with a moment of reading between them.
        for _ in 0..4 {
            stall.observe(true, now);
            now += S;
            verdicts.push(stall.check(now, 3, 4, 1));
            now += S / 2;
            stall.observe(false, now);
            now += Duration::from_millis(10);
        }
        assert_eq!(
            verdicts,
            [Verdict::Wait, Verdict::Wait, Verdict::Spill, Verdict::Wait]
        );
    }

    #[test]
    fn reading_for_a_spill_after_starts_the_sum_again() {
        let t = Instant::now();
        let mut stall = Stall::new(S, 3);
        stall.observe(true, t);
        assert_eq!(stall.check(t + S, 3, 4, 1), Verdict::Wait);
        assert_eq!(stall.check(t + 2 * S, 3, 4, 1), Verdict::Wait);
        stall.observe(false, t + 2 * S);
        let later = t + 4 * S;
        stall.observe(true, later);
        assert_eq!(stall.check(later + S, 3, 4, 1), Verdict::Wait);
        assert_eq!(stall.check(later + 2 * S, 3, 4, 1), Verdict::Wait);
    }
}
