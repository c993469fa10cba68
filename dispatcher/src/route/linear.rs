//! The reference router: every endpoint checked against every event, each
//! filter reading `data` on its own. Its cost grows with the number of
//! endpoints, so the dispatcher does not use it; it stays as the plain
//! statement of the routing semantics that the indexed router is tested
//! against.

use super::index::Subscriber;
use super::tenant::{RecordMeta, TenantKey};
use transports::Event;

pub struct LinearRouter {
    tenant_key: Option<TenantKey>,
    subscribers: Vec<Subscriber>,
}

impl LinearRouter {
    pub fn new(tenant_key: Option<TenantKey>, subscribers: Vec<Subscriber>) -> LinearRouter {
        LinearRouter {
            tenant_key,
            subscribers,
        }
    }

    /// Calls `deliver(lane)` for every subscriber that receives `event`,
    /// in the order they were given. Returns how many did.
    pub fn route<R: RecordMeta + ?Sized>(
        &self,
        event: &Event,
        record: &R,
        mut deliver: impl FnMut(usize),
    ) -> usize {
        let tenant = self
            .tenant_key
            .as_ref()
            .and_then(|k| k.resolve(event, record));
        let event_type = event.event_type();
        let mut n = 0;
        for s in &self.subscribers {
            let tenant_ok = match &s.tenant {
                None => true,
                Some(t) => tenant.as_deref() == Some(t.as_bytes()),
            };
            if tenant_ok
                && s.subscription
                    .patterns
                    .iter()
                    .any(|p| p.matches(event_type))
                && s.subscription.filter.matches(event)
            {
                deliver(s.lane);
                n += 1;
            }
        }
        n
    }
}
