//! Lanes on demand: a lane's task runs only while the lane has something
//! to do. An endpoint with nothing queued, nothing in flight and no retry
//! waiting holds no task: its lane's state (breaker, rate limiter,
//! concurrency limit, settings) waits in its [`Runner`], and the first
//! thing that gives it work starts a task again.
//!
//! Whatever may give a lane work wakes its runner after making the work
//! visible: an offer or a returned delivery in its inbox, a change of its
//! pause or disable switches, an update of its endpoint. A task that finds
//! its lane idle hands the lane back and ends, then looks once more at
//! whether a wake came in meanwhile, and if so takes the lane again (or
//! leaves it to the task that wake started). So no wake is lost, and at
//! most one task runs a lane at a time.
//!
//! The endpoint manager learns of every task started (a [`Started`]), so
//! that it notices a lane that fails and waits for running lanes at
//! shutdown.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::sync::{Mutex, MutexGuard, Weak};

use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Lane;

/// How a lane's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Nothing to do: the lane waits in its runner for a wake.
    Idle,
    /// For good: its inbox was closed (shutdown) or its deleted endpoint's
    /// work is all dead-lettered.
    Done,
}

/// A lane task that was started, for the endpoint manager to follow.
pub struct Started {
    pub index: usize,
    pub task: JoinHandle<Exit>,
}

pub struct Runner {
    index: usize,
    /// The lane while no task runs it; `None` while one does, and after it
    /// is done for good.
    lane: Mutex<Option<Box<Lane>>>,
    running: AtomicBool,
    /// A wake came since the running task last looked at its work.
    woken: AtomicBool,
    started: mpsc::UnboundedSender<Started>,
    /// `dispatcher_lanes_made`, which the lane counts in while its runner
    /// lives.
    made: IntGauge,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.made.dec();
    }
}

impl Runner {
    pub(super) fn new(
        lane: Lane,
        started: mpsc::UnboundedSender<Started>,
        made: IntGauge,
    ) -> Arc<Runner> {
        made.inc();
        Arc::new(Runner {
            index: lane.s.index,
            lane: Mutex::new(Some(Box::new(lane))),
            running: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            started,
            made,
        })
    }

    fn slot(&self) -> MutexGuard<'_, Option<Box<Lane>>> {
        self.lane.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something may have given the lane work: start its task unless one
    /// runs. Call it after the work is visible to the lane.
    pub fn wake(self: &Arc<Self>) {
        // Orders the caller's earlier stores (some only Release) before the
        // flag, against the lane's fence after clearing it.
        fence(Ordering::SeqCst);
        self.woken.store(true, Ordering::SeqCst);
        if self
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return;
        }
        let Some(lane) = self.slot().take() else {
            // Done for good: nothing will run it again.
            self.running.store(false, Ordering::SeqCst);
            return;
        };
        let runner = self.clone();
        let task = tokio::spawn(runner.run(lane));
        let _ = self.started.send(Started {
            index: self.index,
            task,
        });
    }

    /// Whether a task runs the lane now.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    async fn run(self: Arc<Self>, mut lane: Box<Lane>) -> Exit {
        loop {
            self.woken.store(false, Ordering::SeqCst);
            if lane.run_until_idle(&self.woken).await == Exit::Done {
                return Exit::Done;
            }
            *self.slot() = Some(lane);
            self.running.store(false, Ordering::SeqCst);
            // A wake between the lane's last look and here found the task
            // still running and started nothing: take the lane back.
            if !self.woken.load(Ordering::SeqCst)
                || self
                    .running
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                return Exit::Idle;
            }
            match self.slot().take() {
                Some(back) => lane = back,
                None => {
                    self.running.store(false, Ordering::SeqCst);
                    return Exit::Idle;
                }
            }
        }
    }
}

/// A runner as the inbox and the switches know it: weakly, since the lane
/// they belong to lives in the runner.
#[derive(Default)]
pub struct Waker(OnceLock<Weak<Runner>>);

impl Waker {
    pub(super) fn set(&self, runner: &Arc<Runner>) {
        let _ = self.0.set(Arc::downgrade(runner));
    }

    pub fn wake(&self) {
        if let Some(runner) = self.0.get().and_then(Weak::upgrade) {
            runner.wake();
        }
    }
}
