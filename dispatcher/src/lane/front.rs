//! The lanes' front: how far most lanes have got, on a clock that stops
//! while the source is paused. It is what tells a lane that lags the others
//! (spill it) from lanes that all wait alike (back-pressure).
//!
//! Every fresh delivery is stamped when it is queued, with **reading time**:
//! the time the source has spent reading, its pauses by the memory budget
//! left out. Each lane shows the front its [`Progress`]: the stamp of the
//! fresh delivery it started last (before its first, of its oldest queued
//! one). A lane with nothing queued that started nothing within
//! `spill_after` has no say: it is idle, not behind. The front is the
//! **upper median** of the lanes that have a say: a lane whose oldest
//! queued delivery is `pipeline.spill_after` behind it lags most lanes,
//! which have moved on to work read that much later.
//!
//! Why the median and not the newest delivery any lane has started: with
//! many lanes each getting a few of the events, some lane always starts the newest event at once, so every lane with a queue
//! looked lagging in a backlog drain and spilled (docs/benchmarks.md,
//! many-tenants). The upper median still puts one slow lane among fast
//! ones behind (with two lanes it is the faster one), and never the many
//! lanes that wait alike. Leaving the pauses out matters in a drain too,
//! where the source fills the budget, pauses, and resumes when a quarter
//! of it is final: on the wall clock, a lane still busy with work read
//! before a pause would look a whole pause behind. A lone slow endpoint
//! that holds the budget, which no median can show, is the source's to
//! handle (it spills the lanes that still hold fresh work once a pause has
//! lasted `spill_after`, when they are a minority; [`Front::waiting`]
//! counts the lanes that keep up).
//!
//! The median is computed at most every [`REFRESH`] by whichever lane asks,
//! over every lane: at 100,000 lanes about a millisecond each time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `paused_at` when the source is not paused, and a [`Progress`] field
/// that holds nothing.
const NONE: u64 = u64::MAX;

/// How stale the front may be when a lane compares itself with it: small
/// against `spill_after` (2 s by default), which it decides about.
const REFRESH: Duration = Duration::from_millis(50);

pub struct Front {
    /// The origin of every value below.
    base: Instant,
    /// How long a lane with nothing queued counts as keeping up after it
    /// last started a fresh delivery (`pipeline.spill_after`).
    window: u64,
    /// Wall-clock time spent in pauses that have ended (ns).
    paused_total: AtomicU64,
    /// When the current pause began (wall clock from `base`, ns), or
    /// [`NONE`].
    paused_at: AtomicU64,
    /// Every lane's progress; entries only this list holds are dropped at
    /// the next computation.
    lanes: Mutex<Vec<Arc<Progress>>>,
    /// The front as last computed (reading time, ns; 0 while no lane has a
    /// say), and when (wall clock, ns; [`NONE`] before the first time).
    front: AtomicU64,
    computed_at: AtomicU64,
}

/// What one lane shows the front. Its inbox updates it under its queue's
/// lock, so it follows the queue exactly.
pub struct Progress {
    /// The stamp of its oldest queued fresh delivery, or [`NONE`].
    oldest: AtomicU64,
    /// The stamp of the fresh delivery it started last, or [`NONE`].
    started: AtomicU64,
    /// Reading time when it started that one.
    started_at: AtomicU64,
}

impl Progress {
    /// Its oldest queued fresh delivery is now stamped `oldest` (`None`:
    /// nothing fresh is queued).
    pub fn set_oldest(&self, oldest: Option<u64>) {
        self.oldest.store(oldest.unwrap_or(NONE), Ordering::Release);
    }

    /// It started a fresh delivery stamped `stamp`, at reading time `now`.
    pub fn started(&self, stamp: u64, now: u64) {
        self.started_at.store(now, Ordering::Release);
        self.started.store(stamp, Ordering::Release);
    }

    /// How far it has got at reading time `now`: the stamp of what it
    /// started last, or, before its first start, of its oldest queued
    /// delivery. `None` when it has nothing queued and started nothing
    /// within `window`: an idle lane has no say.
    fn mark(&self, now: u64, window: u64) -> Option<u64> {
        let oldest = self.oldest.load(Ordering::Acquire);
        let started = self.started.load(Ordering::Acquire);
        let recent = || now.saturating_sub(self.started_at.load(Ordering::Acquire)) <= window;
        match (started, oldest) {
            (NONE, NONE) => None,
            (NONE, oldest) => Some(oldest),
            (started, NONE) => recent().then_some(started),
            (started, _) => Some(started),
        }
    }
}

impl Front {
    /// A front for lanes that lag at `spill_after`.
    pub fn new(spill_after: Duration) -> Front {
        Front {
            base: Instant::now(),
            window: u64::try_from(spill_after.as_nanos()).unwrap_or(u64::MAX),
            paused_total: AtomicU64::new(0),
            paused_at: AtomicU64::new(NONE),
            lanes: Mutex::default(),
            front: AtomicU64::new(0),
            computed_at: AtomicU64::new(NONE),
        }
    }

    fn wall(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Reading time now: the wall clock since `base`, pauses left out.
    pub fn now(&self) -> u64 {
        let wall = self.wall();
        let paused_at = self.paused_at.load(Ordering::Acquire);
        let current = match paused_at {
            NONE => 0,
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
                    .compare_exchange(NONE, wall, Ordering::AcqRel, Ordering::Acquire);
        } else {
            let at = self.paused_at.swap(NONE, Ordering::AcqRel);
            if at != NONE {
                self.paused_total
                    .fetch_add(wall.saturating_sub(at), Ordering::AcqRel);
            }
        }
    }

    /// A new lane's progress, which the front follows from now on.
    pub fn lane(&self) -> Arc<Progress> {
        let progress = Arc::new(Progress {
            oldest: AtomicU64::new(NONE),
            started: AtomicU64::new(NONE),
            started_at: AtomicU64::new(0),
        });
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(progress.clone());
        progress
    }

    /// How far a delivery stamped `stamp` is behind the front.
    pub fn lag(&self, stamp: u64) -> Duration {
        Duration::from_nanos(self.front().saturating_sub(stamp))
    }

    /// How long a delivery stamped `stamp` has waited, in reading time.
    pub fn waited(&self, stamp: u64) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(stamp))
    }

    /// The front, computed again when older than [`REFRESH`]. One lane
    /// computes; the others meanwhile take the previous value.
    fn front(&self) -> u64 {
        let wall = self.wall();
        let at = self.computed_at.load(Ordering::Acquire);
        let stale = at == NONE || wall.saturating_sub(at) >= REFRESH.as_nanos() as u64;
        if stale {
            if let Ok(mut lanes) = self.lanes.try_lock() {
                let front = Self::median(&mut lanes, self.now(), self.window);
                self.front.store(front, Ordering::Release);
                self.computed_at.store(wall, Ordering::Release);
            }
        }
        self.front.load(Ordering::Acquire)
    }

    /// How many lanes have a say but nothing fresh queued: they keep up
    /// and wait for what the source reads next.
    pub fn waiting(&self) -> usize {
        let now = self.now();
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes
            .iter()
            .filter(|p| {
                Arc::strong_count(p) > 1
                    && p.oldest.load(Ordering::Acquire) == NONE
                    && p.mark(now, self.window).is_some()
            })
            .count()
    }

    /// The upper median of the marks of the lanes that have a say (0 when
    /// none has), forgetting lanes that are gone.
    fn median(lanes: &mut Vec<Arc<Progress>>, now: u64, window: u64) -> u64 {
        lanes.retain(|p| Arc::strong_count(p) > 1);
        let mut marks: Vec<u64> = lanes.iter().filter_map(|p| p.mark(now, window)).collect();
        if marks.is_empty() {
            return 0;
        }
        let middle = marks.len() / 2;
        *marks.select_nth_unstable(middle).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const WINDOW: u64 = 2_000 * MS;

    fn lanes(n: usize) -> Vec<Arc<Progress>> {
        let front = Front::new(Duration::from_secs(2));
        (0..n).map(|_| front.lane()).collect()
    }

    fn median_of(lanes: &[Arc<Progress>], now: u64) -> u64 {
        // The lanes are held here too, as their inboxes would hold them.
        let mut list: Vec<Arc<Progress>> = lanes.to_vec();
        Front::median(&mut list, now, WINDOW)
    }

    #[test]
    fn a_pause_stops_reading_time() {
        let front = Front::new(Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(20));
        let queued = front.now();
        assert!(queued >= 20 * MS, "reading time runs while reading");

        front.set_paused(true);
        let at_pause = front.now();
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            front.now() - at_pause < 100 * MS,
            "reading time stands still while paused"
        );
        front.set_paused(true); // a second pause call changes nothing
        front.set_paused(false);
        let after = front.now();
        assert!(after - queued < 150 * MS, "the pause is left out");
        front.set_paused(false); // nor does a second resume
        assert!(front.waited(queued) <= Duration::from_nanos(front.now() - queued));
    }

    #[test]
    fn one_slow_lane_among_lanes_that_keep_up_lags_them() {
        let now = 60_000 * MS;
        let all = lanes(5);
        for fast in &all[..4] {
            fast.started(now - 10 * MS, now - 5 * MS);
        }
        all[4].started(now - 9_000 * MS, now - 100 * MS);
        all[4].set_oldest(Some(now - 8_000 * MS));
        assert_eq!(median_of(&all, now), now - 10 * MS, "most lanes keep up");
        // With two lanes, the faster one is the front.
        assert_eq!(median_of(&all[3..], now), now - 10 * MS);
    }

    #[test]
    fn many_lanes_that_wait_alike_do_not_lag_each_other() {
        // A drain: 1,000 lanes each with a queue, their oldest deliveries
        // read within half a second of each other, and one lane that has
        // just started the newest event (it was idle).
        let now = 60_000 * MS;
        let all = lanes(1_001);
        for (i, lane) in all[..1_000].iter().enumerate() {
            let oldest = now - 5_000 * MS + (i as u64 % 500) * MS;
            lane.started(oldest - MS, now - 100 * MS);
            lane.set_oldest(Some(oldest));
        }
        all[1_000].started(now, now);
        let front = median_of(&all, now);
        assert!(front <= now - 4_500 * MS, "the front follows most lanes");
        for lane in &all[..1_000] {
            let oldest = lane.oldest.load(Ordering::Relaxed);
            assert!(front.saturating_sub(oldest) < WINDOW, "none lags");
        }
    }

    #[test]
    fn a_lane_finishing_a_backlog_read_at_once_does_not_lag_those_done() {
        // Everything was read at t = 1 s; three lanes are through, the
        // fourth has a few deliveries left, 5 s later.
        let now = 6_000 * MS;
        let all = lanes(4);
        for done in &all[..3] {
            done.started(1_000 * MS + 3, now - 50 * MS);
        }
        all[3].started(1_000 * MS + 1, now - 10 * MS);
        all[3].set_oldest(Some(1_000 * MS + 2));
        let front = median_of(&all, now);
        assert!(front.saturating_sub(1_000 * MS + 2) < WINDOW);
    }

    #[test]
    fn lanes_idle_longer_than_spill_after_have_no_say_and_gone_lanes_go() {
        let now = 60_000 * MS;
        let front = Front::new(Duration::from_secs(2));
        let idle: Vec<_> = (0..100).map(|_| front.lane()).collect();
        for lane in &idle[..50] {
            lane.started(now - 3_100 * MS, now - 3_000 * MS);
        }
        let busy = [front.lane(), front.lane()];
        busy[0].set_oldest(Some(now - 5_000 * MS));
        busy[1].set_oldest(Some(now - 4_900 * MS));
        let mut list = front.lanes.lock().unwrap();
        assert_eq!(Front::median(&mut list, now, WINDOW), now - 4_900 * MS);
        drop(busy);
        assert_eq!(
            Front::median(&mut list, now, WINDOW),
            0,
            "no lane has a say"
        );
        assert_eq!(list.len(), 100, "the dropped lanes are forgotten");
    }

    #[test]
    fn the_lag_is_measured_against_the_front() {
        let front = Front::new(Duration::from_secs(2));
        let (slow, fast) = (front.lane(), front.lane());
        assert_eq!(front.lag(0), Duration::ZERO, "no lane has a say yet");
        std::thread::sleep(Duration::from_millis(60));
        slow.set_oldest(Some(0));
        let now = front.now();
        fast.started(now, now);
        std::thread::sleep(REFRESH);
        assert!(
            front.lag(0) >= Duration::from_millis(60),
            "{:?}",
            front.lag(0)
        );
    }
}
