//! The routing table: subscriptions indexed so that one event's cost
//! depends on the endpoints it may reach, not on how many there are.
//!
//! Three keys narrow the candidates:
//!
//! 1. **tenant**: the tenant-less endpoints and, looked up by the event's
//!    tenant, that tenant's endpoints. Each tenant's part of the table is
//!    small and kept together, so an event touches only its own tenant's
//!    memory, whatever the number of tenants;
//! 2. **event type**: within a part, one bucket per pattern: per exact
//!    type, per prefix (`message.*`) and for `*`. An event's type is
//!    turned once into the patterns that match it (its exact type, each of
//!    its prefixes such as `message.` for `message.sent`, and `*`), and
//!    those are looked up in the part;
//! 3. **exact-match filter values**: within a bucket, endpoints whose
//!    filter has an exact-match condition (`data.x: v`, a list, `$eq`,
//!    `$in`) are filed under each accepted value of one such condition.
//!    The event's value of that field finds them.
//!
//! Only the candidates left are checked further: the rest of their filter
//! (other conditions, operators), evaluated on fields read once per event
//! (see [`super::fields`]). Endpoints whose filter has no exact-match
//! condition are checked one by one, but only within their type and
//! tenant.
//!
//! The table is immutable once built: a change of endpoints builds a new
//! one (from the list of endpoints, in one pass) and swaps the `Arc`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use transports::Event;

use super::fields::{FieldId, FieldSet, Fields};
use super::filter::{eval, Field, Node, Test};
use super::tenant::{RecordMeta, Tenant, TenantKey};
use super::{EventPattern, Subscription};

/// One endpoint as the router sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// What routing returns for this endpoint: its lane's index.
    pub lane: usize,
    pub tenant: Option<Tenant>,
    pub subscription: Subscription,
}

/// An immutable routing table; see the module documentation.
#[derive(Debug)]
pub struct RouteTable {
    tenant_key: Option<TenantKey>,
    /// The field a `data.` tenant key reads.
    tenant_field: Option<FieldId>,
    fields: FieldSet,
    /// Per entry (one per subscriber): its lane.
    lanes: Vec<usize>,
    /// Per entry: what its filter still asks once the index found it.
    rest: Vec<Vec<Node<FieldId>>>,
    /// Per pattern (group), whether any filter under it reads `data`.
    reads_fields: Vec<bool>,
    exact: HashMap<Box<str>, u32>,
    /// Keyed by the prefix with its dot: `message.`.
    prefixes: HashMap<Box<str>, u32>,
    all: Option<u32>,
    untenanted: Part,
    tenants: HashMap<Box<[u8]>, Part>,
}

/// The buckets of one tenant (or of the tenant-less endpoints), by group.
///
/// The lists of all its buckets share one array each, so that routing an
/// event reads a few adjacent cache lines of its tenant's part rather than
/// one allocation per bucket.
#[derive(Debug, Default)]
struct Part {
    /// Sorted; apart from the buckets so that a search reads one or two
    /// cache lines.
    groups: Vec<u32>,
    buckets: Vec<Bucket>,
    /// Every bucket's `plain`, one after the other.
    lanes: Vec<usize>,
    /// Every bucket's `scan`, one after the other.
    scan: Vec<u32>,
    /// Per bucket, its lists while the table is being built.
    pending: Vec<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    plain: Vec<usize>,
    scan: Vec<u32>,
}

impl Part {
    fn bucket(&self, group: u32) -> Option<&Bucket> {
        let i = self.groups.binary_search(&group).ok()?;
        self.buckets.get(i)
    }

    fn bucket_mut(&mut self, group: u32) -> (&mut Bucket, &mut Pending) {
        let i = match self.groups.binary_search(&group) {
            Ok(i) => i,
            Err(i) => {
                self.groups.insert(i, group);
                self.buckets.insert(i, Bucket::default());
                self.pending.insert(i, Pending::default());
                i
            }
        };
        (&mut self.buckets[i], &mut self.pending[i])
    }

    /// Move the lists built in `pending` into the shared arrays.
    fn freeze(&mut self) {
        for (bucket, pending) in self
            .buckets
            .iter_mut()
            .zip(std::mem::take(&mut self.pending))
        {
            bucket.plain = span(&mut self.lanes, pending.plain);
            bucket.scan = span(&mut self.scan, pending.scan);
        }
        self.groups.shrink_to_fit();
        self.buckets.shrink_to_fit();
        self.lanes.shrink_to_fit();
        self.scan.shrink_to_fit();
    }
}

/// Append `items` to `all`; where they now lie.
fn span<T>(all: &mut Vec<T>, items: Vec<T>) -> Range<u32> {
    let start = all.len() as u32;
    all.extend(items);
    start..all.len() as u32
}

#[derive(Debug, Default)]
struct Bucket {
    /// Lanes of endpoints without a filter, in the part's `lanes`.
    plain: Range<u32>,
    by_value: Vec<ValueIndex>,
    /// Entries with a filter but no exact-match condition, in the part's
    /// `scan`.
    scan: Range<u32>,
}

/// Entries filed under the values one field must have.
#[derive(Debug)]
struct ValueIndex {
    field: FieldId,
    entries: HashMap<Box<str>, Vec<u32>>,
}

impl RouteTable {
    /// Build from every endpoint that routing should know. `lane`s are
    /// expected to be distinct; a lane given twice receives an event once.
    pub fn build(
        tenant_key: Option<TenantKey>,
        subscribers: impl IntoIterator<Item = Subscriber>,
    ) -> RouteTable {
        let mut fields = FieldSet::default();
        let tenant_field = match &tenant_key {
            Some(TenantKey::Data(path)) => Some(fields.intern(path)),
            _ => None,
        };
        let mut table = RouteTable {
            tenant_key,
            tenant_field,
            fields,
            lanes: Vec::new(),
            rest: Vec::new(),
            reads_fields: Vec::new(),
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            all: None,
            untenanted: Part::default(),
            tenants: HashMap::new(),
        };
        // Entries numbered tenant by tenant keep each tenant's entries, and
        // the memory allocated for them, together: an event then touches a
        // few cache lines of its own tenant rather than lines spread over
        // the whole table.
        let mut subscribers: Vec<Subscriber> = subscribers.into_iter().collect();
        subscribers.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        for s in subscribers {
            table.add(s);
        }
        table.untenanted.freeze();
        table.tenants.values_mut().for_each(Part::freeze);
        table.fields.finish();
        table
    }

    fn add(&mut self, s: Subscriber) {
        let entry = self.lanes.len() as u32;
        self.lanes.push(s.lane);
        let nodes = s.subscription.filter.nodes();
        // The exact-match condition accepting the fewest values leads the
        // index: it leaves the fewest candidates.
        let key = nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match n {
                Node::Test {
                    field,
                    test: Test::OneOf(values),
                } => Some((i, field, values)),
                _ => None,
            })
            .min_by_key(|(_, _, values)| values.len());
        let index_on = key.map(|(_, path, values)| (self.fields.intern(path), values));
        let rest = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| key.is_none_or(|(k, _, _)| k != *i))
            .map(|(_, n)| compile(n, &mut self.fields))
            .collect();
        self.rest.push(rest);

        let mut groups: Vec<u32> = s
            .subscription
            .patterns
            .iter()
            .map(|p| self.group_of(p))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let filtered = !s.subscription.filter.is_empty();
        let part = match &s.tenant {
            None => &mut self.untenanted,
            Some(t) => self.tenants.entry(t.as_bytes().into()).or_default(),
        };
        for g in groups {
            self.reads_fields[g as usize] |= filtered;
            let (bucket, pending) = part.bucket_mut(g);
            match index_on {
                _ if !filtered => pending.plain.push(s.lane),
                None => pending.scan.push(entry),
                Some((field, values)) => {
                    let at = match bucket.by_value.iter().position(|v| v.field == field) {
                        Some(at) => at,
                        None => {
                            bucket.by_value.push(ValueIndex {
                                field,
                                entries: HashMap::new(),
                            });
                            bucket.by_value.len() - 1
                        }
                    };
                    let index = &mut bucket.by_value[at].entries;
                    for v in values.iter() {
                        index.entry(v.clone()).or_default().push(entry);
                    }
                }
            }
        }
    }

    fn group_of(&mut self, pattern: &EventPattern) -> u32 {
        let next = self.reads_fields.len() as u32;
        let id = match pattern {
            EventPattern::All => *self.all.get_or_insert(next),
            EventPattern::Prefix(p) => *self.prefixes.entry(p.as_str().into()).or_insert(next),
            EventPattern::Exact(t) => *self.exact.entry(t.as_str().into()).or_insert(next),
        };
        if id == next {
            self.reads_fields.push(false);
        }
        id
    }

    /// The groups whose patterns match `event_type`.
    pub(crate) fn groups_for(&self, event_type: &str) -> Vec<u32> {
        let mut found = Vec::new();
        found.extend(self.exact.get(event_type));
        // `message.*` is stored as `message.`: try every prefix of the type
        // that ends in a dot.
        for (i, b) in event_type.bytes().enumerate() {
            if b == b'.' {
                found.extend(self.prefixes.get(&event_type[..=i]));
            }
        }
        found.extend(self.all);
        found
    }

    pub fn tenant_key(&self) -> Option<&TenantKey> {
        self.tenant_key.as_ref()
    }

    /// How many subscribers the table was built from.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    pub(crate) fn fields(&self) -> &FieldSet {
        &self.fields
    }

    /// The lanes of `groups` that receive `event`, into `out`, ascending
    /// and each once. `fields` is the caller's scratch, sized for this
    /// table.
    pub(crate) fn route_into<R: RecordMeta + ?Sized>(
        &self,
        groups: &[u32],
        event: &Event,
        record: &R,
        fields: &mut Fields,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        // `data` was checked as UTF-8 when the event was decoded.
        let data = std::str::from_utf8(event.data()).unwrap_or("");
        let reads =
            self.tenant_field.is_some() || groups.iter().any(|&g| self.reads_fields[g as usize]);
        if reads {
            fields.next_event();
            fields.read(&self.fields, data);
        }
        let fields = &*fields;
        let tenant: Option<Cow<'_, [u8]>> = match &self.tenant_key {
            None => None,
            Some(TenantKey::Key) => record.key().map(Cow::Borrowed),
            Some(TenantKey::Header(name)) => record.header(name).map(Cow::Borrowed),
            Some(TenantKey::Data(_)) => self.tenant_field.and_then(|f| match fields.get(f, data) {
                Field::Value { raw, text } if is_tenant_value(raw) => {
                    Some(Cow::Borrowed(text.as_bytes()))
                }
                _ => None,
            }),
        };
        let own = tenant.and_then(|t| self.tenants.get(&*t));
        for part in std::iter::once(&self.untenanted).chain(own) {
            for &g in groups {
                if let Some(bucket) = part.bucket(g) {
                    self.visit(part, bucket, fields, data, out);
                }
            }
        }
        // Lists of several buckets interleave, and an endpoint with
        // overlapping patterns (`message.sent`, `message.*`) is in more
        // than one bucket.
        out.sort_unstable();
        out.dedup();
    }

    fn visit(
        &self,
        part: &Part,
        bucket: &Bucket,
        fields: &Fields,
        data: &str,
        out: &mut Vec<usize>,
    ) {
        let range = |r: &Range<u32>| r.start as usize..r.end as usize;
        out.extend_from_slice(part.lanes.get(range(&bucket.plain)).unwrap_or_default());
        for index in &bucket.by_value {
            if let Field::Value { text, .. } = fields.get(index.field, data) {
                if let Some(entries) = index.entries.get(text) {
                    self.check(entries, fields, data, out);
                }
            }
        }
        let scan = part.scan.get(range(&bucket.scan)).unwrap_or_default();
        self.check(scan, fields, data, out);
    }

    fn check(&self, entries: &[u32], fields: &Fields, data: &str, out: &mut Vec<usize>) {
        for &e in entries {
            let holds = eval(&self.rest[e as usize], &mut |&f, test: &Test| {
                test.eval(fields.get(f, data))
            });
            if holds {
                out.push(self.lanes[e as usize]);
            }
        }
    }
}

/// The same kinds [`super::tenant::tenant_text`] accepts: strings and numbers.
fn is_tenant_value(raw: &str) -> bool {
    matches!(raw.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

fn compile(node: &Node<super::filter::Path>, fields: &mut FieldSet) -> Node<FieldId> {
    match node {
        Node::Test { field, test } => Node::Test {
            field: fields.intern(field),
            test: test.clone(),
        },
        Node::Any(branches) => Node::Any(
            branches
                .iter()
                .map(|b| b.iter().map(|n| compile(n, fields)).collect())
                .collect(),
        ),
    }
}
