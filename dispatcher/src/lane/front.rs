//! The lanes' front: how far the fastest lane has got, on a clock that
//! stops while the source is paused. It is what tells a lane that lags the
//! others (spill it) from lanes that all wait alike (back-pressure).
//!
//! Every fresh delivery is stamped when it is queued, with **reading time**:
//! the time the source has spent reading, its pauses by the memory budget
//! left out. The front is the newest stamp of a fresh delivery any lane has
//! started. A lane whose oldest queued delivery is `pipeline.spill_after`
//! behind the front lags: other lanes have moved on to work read that much
//! later. Leaving the pauses out matters in a backlog drain, where the
//! source fills the budget, pauses, and resumes when a quarter of it is
//! final: on the wall clock, the first lane to start a delivery read after
//! a pause would put every lane still busy with older work a whole pause
//! behind. A lone slow endpoint that holds the budget, which no other
//! lane's progress can show, is the source's to handle (it spills the
//! lanes that still hold fresh work once a pause has lasted `spill_after`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// `paused_at` when the source is not paused.
const RUNNING: u64 = u64::MAX;

pub struct Front {
    /// The origin of every value below.
    base: Instant,
    /// The newest reading-time stamp of a started fresh delivery (ns).
    newest_started: AtomicU64,
    /// Wall-clock time spent in pauses that have ended (ns).
    paused_total: AtomicU64,
    /// When the current pause began (wall clock from `base`, ns), or
    /// [`RUNNING`].
    paused_at: AtomicU64,
}

impl Default for Front {
    fn default() -> Self {
        Front {
            base: Instant::now(),
            newest_started: AtomicU64::new(0),
            paused_total: AtomicU64::new(0),
            paused_at: AtomicU64::new(RUNNING),
        }
    }
}

impl Front {
    fn wall(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Reading time now: the wall clock since `base`, pauses left out.
    pub fn now(&self) -> u64 {
        let wall = self.wall();
        let paused_at = self.paused_at.load(Ordering::Acquire);
        let current = match paused_at {
            RUNNING => 0,
            at => wall.saturating_sub(at),
        };
        wall.saturating_sub(self.paused_total.load(Ordering::Acquire))
            .saturating_sub(current)
    }

    /// The source paused (or resumed) reading for the memory budget.
    pub fn set_paused(&self, paused: bool) {
        let wall = self.wall();
        if paused {
            let _ =
                self.paused_at
                    .compare_exchange(RUNNING, wall, Ordering::AcqRel, Ordering::Acquire);
        } else {
            let at = self.paused_at.swap(RUNNING, Ordering::AcqRel);
            if at != RUNNING {
                self.paused_total
                    .fetch_add(wall.saturating_sub(at), Ordering::AcqRel);
            }
        }
    }

    /// A lane started a fresh delivery stamped `stamp`.
    pub fn started(&self, stamp: u64) {
        self.newest_started.fetch_max(stamp, Ordering::Relaxed);
    }

    /// How far a delivery stamped `stamp` is behind the front.
    pub fn lag(&self, stamp: u64) -> Duration {
        Duration::from_nanos(
            self.newest_started
                .load(Ordering::Relaxed)
                .saturating_sub(stamp),
        )
    }

    /// How long a delivery stamped `stamp` has waited, in reading time.
    pub fn waited(&self, stamp: u64) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(stamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_stops_reading_time_and_the_lag_counts_only_started_work() {
        let front = Front::default();
        std::thread::sleep(Duration::from_millis(20));
        let queued = front.now();
        assert!(queued >= 20_000_000, "reading time runs while reading");

        front.set_paused(true);
        let at_pause = front.now();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            front.now() - at_pause < 100_000_000,
            "reading time stands still while paused"
        );
        front.set_paused(true); // a second pause call changes nothing
        front.set_paused(false);
        let after = front.now();
        assert!(after - queued < 150_000_000, "the pause is left out");
        front.set_paused(false); // nor does a second resume

        // Nothing started yet: no lag, whatever the wait.
        assert_eq!(front.lag(queued), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(10));
        let newer = front.now();
        front.started(newer);
        front.started(queued); // an older start never moves it back
        let lag = front.lag(queued);
        assert!(lag >= Duration::from_millis(10), "{lag:?}");
        assert_eq!(front.lag(newer), Duration::ZERO);
        assert!(front.waited(queued) >= lag);
    }
}
