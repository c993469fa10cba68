//! Faults no retry can fix: a fatal error of a Kafka client (the idempotent
//! producer's, or the consumer's), authorization refused, an internal topic
//! deleted, a lane that died. Any part of the dispatcher can report one;
//! the first report stops the whole process, which exits non-zero with that
//! message, so it is restarted or an operator looks, instead of sitting
//! "healthy" while nothing moves.

use std::sync::Arc;

use tokio::sync::watch;

/// The process-wide "stop, this cannot go on" switch of one dispatcher.
#[derive(Debug)]
pub struct Fatal {
    tx: watch::Sender<Option<String>>,
}

impl Fatal {
    pub fn new() -> Arc<Fatal> {
        let (tx, _) = watch::channel(None);
        Arc::new(Fatal { tx })
    }

    /// Report a fault; the first one reported is the one the process exits with.
    pub fn trip(&self, reason: impl Into<String>) {
        let reason = reason.into();
        let first = self.tx.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason.clone());
            true
        });
        if first {
            tracing::error!(%reason, "FATAL: stopping the dispatcher");
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.tx.borrow().is_some()
    }

    /// The reason reported first, if any.
    pub fn reason(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Resolves with the reason once a fault was reported.
    pub async fn tripped(&self) -> String {
        let mut rx = self.tx.subscribe();
        let seen = rx
            .wait_for(|r| r.is_some())
            .await
            .map(|r| r.clone().unwrap_or_default());
        match seen {
            Ok(reason) => reason,
            // The sender lives as long as `self`.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins() {
        let fatal = Fatal::new();
        assert!(!fatal.is_tripped());
        let waiter = {
            let fatal = fatal.clone();
            tokio::spawn(async move { fatal.tripped().await })
        };
        fatal.trip("producer fenced");
        fatal.trip("something later");
        assert!(fatal.is_tripped());
        assert_eq!(waiter.await.unwrap(), "producer fenced");
        assert_eq!(fatal.tripped().await, "producer fenced");
    }
}
