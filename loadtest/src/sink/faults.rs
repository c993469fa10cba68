//! Fault injection: what a receiver does to a request instead of (or before)
//! accepting it, per endpoint, optionally only within a time window.
//!
//! Faults are listed in order; `latency` adds to whatever happens next, and
//! the first other fault whose dice roll fires decides the answer. Windows
//! (`from`, `until`) are measured from the sink's epoch: the start of the
//! dispatcher in a `run`, the start of the sink otherwise.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answer later by `latency` (then as the other faults decide).
    Latency,
    /// Answer `status` (default 500).
    Error,
    /// Answer 429 with `Retry-After` (default 1 s).
    Throttle,
    /// Never answer; the client's timeout ends the request.
    Hang,
    /// Close the connection without an answer (TCP reset).
    Reset,
    /// The endpoint is down: connections are refused, and requests on
    /// connections opened before are reset.
    Refuse,
    /// Answer 410 Gone: the receiver wants no more deliveries.
    Gone,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Latency,
        FaultKind::Error,
        FaultKind::Throttle,
        FaultKind::Hang,
        FaultKind::Reset,
        FaultKind::Refuse,
        FaultKind::Gone,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Latency => "latency",
            FaultKind::Error => "error",
            FaultKind::Throttle => "throttle",
            FaultKind::Hang => "hang",
            FaultKind::Reset => "reset",
            FaultKind::Refuse => "refuse",
            FaultKind::Gone => "gone",
        }
    }
}

/// One fault of one endpoint, as a scenario writes it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub kind: FaultKind,
    /// Share of requests it applies to, 0 to 1.
    #[serde(default = "always")]
    pub ratio: f64,
    /// Active from this long after the epoch (default: from the start).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub from: Option<Duration>,
    /// Active until this long after the epoch (default: to the end).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<Duration>,
    /// `latency`: the delay added.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency: Option<Duration>,
    /// `error`: the status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `throttle`: the `Retry-After` answered (whole seconds, at least 1).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after: Option<Duration>,
}

fn always() -> f64 {
    1.0
}

/// Longest a hung request is held before the sink lets go of it anyway
/// (bounds the tasks and sockets a hang can pin).
pub const MAX_HANG: Duration = Duration::from_secs(300);

impl Fault {
    /// Problems with the fault's settings, if any.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(format!("ratio {} is not between 0 and 1", self.ratio));
        }
        if let (Some(from), Some(until)) = (self.from, self.until) {
            if until <= from {
                return Err("until must be later than from".into());
            }
        }
        let stray = |what: &str, set: bool| {
            if set {
                Err(format!(
                    "`{what}` does not apply to a {} fault",
                    self.kind.name()
                ))
            } else {
                Ok(())
            }
        };
        match self.kind {
            FaultKind::Latency => match self.latency {
                Some(d) if !d.is_zero() && d <= MAX_HANG => {}
                _ => return Err("a latency fault needs `latency` between 1ms and 5m".into()),
            },
            _ => stray("latency", self.latency.is_some())?,
        }
        match self.kind {
            FaultKind::Error => {
                if let Some(s) = self.status {
                    if !(300..=599).contains(&s) {
                        return Err(format!("status {s} is not an error status (300 to 599)"));
                    }
                }
            }
            _ => stray("status", self.status.is_some())?,
        }
        if self.kind != FaultKind::Throttle {
            stray("retry_after", self.retry_after.is_some())?;
        }
        Ok(())
    }

    /// Whether the fault's window contains `t` (time since the epoch).
    pub fn active_at(&self, t: Duration) -> bool {
        self.from.is_none_or(|from| t >= from) && self.until.is_none_or(|until| t < until)
    }
}

/// What the sink does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Answer {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    Hang,
    Reset,
}

/// The decision for one request: an answer, a delay before it, and the
/// fault that decided (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub delay: Duration,
    pub fault: Option<FaultKind>,
    pub delayed: bool,
}

/// Decide what to do with a request at `t` after the epoch. `roll` gives a
/// uniform number in [0, 1) for each fault that could fire.
pub fn decide(faults: &[Fault], t: Duration, mut roll: impl FnMut() -> f64) -> Decision {
    let mut decision = Decision {
        action: Action::Accept,
        delay: Duration::ZERO,
        fault: None,
        delayed: false,
    };
    for f in faults.iter().filter(|f| f.active_at(t)) {
        if f.ratio < 1.0 && roll() >= f.ratio {
            continue;
        }
        let action = match f.kind {
            FaultKind::Latency => {
                decision.delay += f.latency.unwrap_or_default();
                decision.delayed = true;
                continue;
            }
            FaultKind::Error => Action::Answer {
                status: f.status.unwrap_or(500),
                retry_after_secs: None,
            },
            FaultKind::Throttle => Action::Answer {
                status: 429,
                retry_after_secs: Some(
                    f.retry_after
                        .map_or(1, |d| d.as_secs_f64().ceil() as u64)
                        .max(1),
                ),
            },
            FaultKind::Gone => Action::Answer {
                status: 410,
                retry_after_secs: None,
            },
            FaultKind::Hang => Action::Hang,
            FaultKind::Reset | FaultKind::Refuse => Action::Reset,
        };
        decision.action = action;
        decision.fault = Some(f.kind);
        break;
    }
    decision
}

/// Whether an endpoint with these faults is refusing connections at `t`.
pub fn refusing(faults: &[Fault], t: Duration) -> bool {
    faults
        .iter()
        .any(|f| f.kind == FaultKind::Refuse && f.ratio > 0.0 && f.active_at(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(kind: FaultKind) -> Fault {
        Fault {
            kind,
            ratio: 1.0,
            from: None,
            until: None,
            latency: None,
            status: None,
            retry_after: None,
        }
    }

    #[test]
    fn latency_adds_and_the_first_firing_fault_decides() {
        let mut slow = fault(FaultKind::Latency);
        slow.latency = Some(Duration::from_millis(30));
        let mut throttle = fault(FaultKind::Throttle);
        throttle.retry_after = Some(Duration::from_millis(1500));
        let d = decide(
            &[slow.clone(), throttle, fault(FaultKind::Gone)],
            Duration::ZERO,
            || 0.0,
        );
        assert_eq!(
            d.action,
            Action::Answer {
                status: 429,
                retry_after_secs: Some(2)
            }
        );
        assert_eq!(d.delay, Duration::from_millis(30));
        assert_eq!(d.fault, Some(FaultKind::Throttle));

        let d = decide(&[slow], Duration::ZERO, || 0.0);
        assert_eq!((d.action, d.fault, d.delayed), (Action::Accept, None, true));
    }

    #[test]
    fn ratio_and_window_gate_faults() {
        let mut err = fault(FaultKind::Error);
        err.ratio = 0.25;
        err.status = Some(503);
        err.from = Some(Duration::from_secs(10));
        err.until = Some(Duration::from_secs(20));
        let at = |s| Duration::from_secs(s);
        assert_eq!(decide(&[err.clone()], at(5), || 0.0).action, Action::Accept);
        assert_eq!(
            decide(&[err.clone()], at(15), || 0.3).action,
            Action::Accept
        );
        assert_eq!(
            decide(&[err.clone()], at(15), || 0.2).action,
            Action::Answer {
                status: 503,
                retry_after_secs: None
            }
        );
        assert_eq!(decide(&[err], at(20), || 0.0).action, Action::Accept);

        let mut down = fault(FaultKind::Refuse);
        down.until = Some(Duration::from_secs(60));
        assert!(refusing(&[down.clone()], at(59)));
        assert!(!refusing(&[down.clone()], at(60)));
        assert_eq!(decide(&[down], at(1), || 0.0).action, Action::Reset);
    }

    #[test]
    fn checks_settings() {
        assert!(fault(FaultKind::Latency).check().is_err());
        let mut f = fault(FaultKind::Error);
        f.status = Some(200);
        assert!(f.check().is_err());
        let mut f = fault(FaultKind::Hang);
        f.latency = Some(Duration::from_secs(1));
        assert!(f.check().unwrap_err().contains("does not apply"));
        let mut f = fault(FaultKind::Reset);
        f.ratio = 1.5;
        assert!(f.check().is_err());
        assert!(fault(FaultKind::Reset).check().is_ok());
    }
}
