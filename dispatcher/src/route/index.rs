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
//! (see `route/fields.rs`). Endpoints whose filter has no exact-match
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
    /// Per entry (one per subscriber): its filter, the condition the index
    /// files it under (if any) first.
    filters: Vec<Box<[Node<FieldId>]>>,
    /// Per pattern (group), whether any filter under it reads `data`.
    reads_fields: Vec<bool>,
    exact: HashMap<Box<str>, u32>,
    /// Keyed by the prefix with its dot: `message.`.
    prefixes: HashMap<Box<str>, u32>,
    all: Option<u32>,
    untenanted: Part,
    tenants: HashMap<TenantBytes, Part>,
}

/// A tenant as a map key: short ones (account ids are) held inline, so
/// that comparing the key found in the map reads no other cache line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TenantBytes {
    Inline(u8, [u8; INLINE_TENANT]),
    Boxed(Box<[u8]>),
}

const INLINE_TENANT: usize = 30;

impl TenantBytes {
    fn new(bytes: &[u8]) -> TenantBytes {
        match u8::try_from(bytes.len()) {
            Ok(len) if bytes.len() <= INLINE_TENANT => {
                let mut inline = [0; INLINE_TENANT];
                inline[..bytes.len()].copy_from_slice(bytes);
                TenantBytes::Inline(len, inline)
            }
            _ => TenantBytes::Boxed(bytes.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            TenantBytes::Inline(len, bytes) => bytes.get(..*len as usize).unwrap_or_default(),
            TenantBytes::Boxed(bytes) => bytes,
        }
    }
}

// Hashes as the bytes do, so that the map can be searched with `&[u8]`.
impl std::hash::Hash for TenantBytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for TenantBytes {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Below this many endpoints filed under one field in one bucket, checking
/// each costs less than a hash lookup (a tenant's buckets are small).
const INDEX_MIN: usize = 8;

/// Parts of at most this many endpoints are warmed before they are walked
/// (see [`Part::warm`]); a bigger part would cost more to warm than its
/// misses do, and its walk is what the index keeps short.
const WARM_MAX: u32 = 256;

/// An endpoint in a bucket: its lane, and its filter (if it has one).
#[derive(Debug, Clone, Copy)]
struct Item {
    lane: usize,
    entry: u32,
}

const NO_FILTER: u32 = u32::MAX;

/// The buckets of one tenant (or of the tenant-less endpoints), by group.
///
/// The items of all its buckets share one array, so that routing an event
/// reads a few adjacent cache lines of its tenant's part rather than one
/// allocation per bucket.
#[derive(Debug, Default)]
struct Part {
    /// Sorted; apart from the buckets so that a search reads one or two
    /// cache lines.
    groups: Vec<u32>,
    buckets: Vec<Bucket>,
    /// Every bucket's items, one bucket after the other.
    items: Vec<Item>,
    /// Per bucket, what it holds while the table is being built.
    pending: Vec<Pending>,
    /// The entries of this part's endpoints (numbered tenant by tenant).
    entries: Range<u32>,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Checked one by one: in the part's `items`.
    items: Range<u32>,
    by_value: Vec<ValueIndex>,
}

#[derive(Debug, Default)]
struct Pending {
    items: Vec<Item>,
    /// Items with an exact-match condition, and the field it is on.
    keyed: Vec<(FieldId, Item)>,
}

/// Endpoints filed under the values one field must have.
#[derive(Debug)]
struct ValueIndex {
    field: FieldId,
    items: HashMap<Box<str>, Vec<Item>>,
}

impl Part {
    fn bucket(&self, group: u32) -> Option<&Bucket> {
        let i = self.groups.binary_search(&group).ok()?;
        self.buckets.get(i)
    }

    fn pending(&mut self, group: u32) -> &mut Pending {
        let i = match self.groups.binary_search(&group) {
            Ok(i) => i,
            Err(i) => {
                self.groups.insert(i, group);
                self.buckets.insert(i, Bucket::default());
                self.pending.insert(i, Pending::default());
                i
            }
        };
        &mut self.pending[i]
    }

    /// Read one word of every cache line of the part's arrays (and of its
    /// entries' filters). None of these loads depends on another, so the
    /// processor overlaps their cache misses instead of waiting for each in
    /// turn during the walk: at 100,000 endpoints a tenant's part is
    /// rarely in cache, and its misses are most of what routing costs.
    fn warm(&self, filters: &[Box<[Node<FieldId>]>]) -> usize {
        let mut sum = self.groups.first().map_or(0, |g| *g as usize);
        for b in self.buckets.iter().step_by(2) {
            sum ^= b.items.start as usize;
        }
        for item in self.items.iter().step_by(4) {
            sum ^= item.lane;
        }
        let entries = self.entries.start as usize..self.entries.end as usize;
        for f in filters.get(entries).unwrap_or_default() {
            sum ^= match f.first() {
                Some(Node::Test { field, .. }) => *field as usize,
                Some(Node::Any(branches)) => branches.len(),
                None => 0,
            };
        }
        sum
    }

    /// Lay the buckets out for routing: items in the shared array, and a
    /// value index for each field that enough endpoints are filed under.
    fn freeze(&mut self, filters: &[Box<[Node<FieldId>]>], index_min: usize) {
        for (bucket, mut pending) in self
            .buckets
            .iter_mut()
            .zip(std::mem::take(&mut self.pending))
        {
            pending.keyed.sort_by_key(|(field, _)| *field);
            for chunk in pending.keyed.chunk_by(|a, b| a.0 == b.0) {
                if chunk.len() < index_min {
                    pending.items.extend(chunk.iter().map(|(_, item)| *item));
                    continue;
                }
                let mut items: HashMap<Box<str>, Vec<Item>> = HashMap::new();
                for (_, item) in chunk {
                    if let Some(Node::Test {
                        test: Test::OneOf(values),
                        ..
                    }) = filters.get(item.entry as usize).and_then(|f| f.first())
                    {
                        for v in values.iter() {
                            items.entry(v.clone()).or_default().push(*item);
                        }
                    }
                }
                bucket.by_value.push(ValueIndex {
                    field: chunk[0].0,
                    items,
                });
            }
            // Lane order within a bucket: the output is sorted at the end,
            // and sorted input sorts fastest.
            pending.items.sort_by_key(|item| item.lane);
            let start = self.items.len() as u32;
            self.items.extend(pending.items);
            bucket.items = start..self.items.len() as u32;
        }
        self.groups.shrink_to_fit();
        self.buckets.shrink_to_fit();
        self.items.shrink_to_fit();
    }
}

impl RouteTable {
    /// Build from every endpoint that routing should know. `lane`s are
    /// expected to be distinct; a lane given twice receives an event once.
    pub fn build(
        tenant_key: Option<TenantKey>,
        subscribers: impl IntoIterator<Item = Subscriber>,
    ) -> RouteTable {
        RouteTable::build_indexing(tenant_key, subscribers, INDEX_MIN)
    }

    /// [`RouteTable::build`], with a value index for a field as soon as
    /// `index_min` endpoints of a bucket are filed under it (1: always), so
    /// that tests with few endpoints exercise the value index too.
    #[doc(hidden)]
    pub fn build_indexing(
        tenant_key: Option<TenantKey>,
        subscribers: impl IntoIterator<Item = Subscriber>,
        index_min: usize,
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
            filters: Vec::new(),
            reads_fields: Vec::new(),
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            all: None,
            untenanted: Part::default(),
            tenants: HashMap::new(),
        };
        // Entries numbered tenant by tenant keep each tenant's filters, and
        // the memory allocated for them, together: an event then touches a
        // few cache lines of its own tenant rather than lines spread over
        // the whole table.
        let mut subscribers: Vec<Subscriber> = subscribers.into_iter().collect();
        subscribers.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        for s in subscribers {
            table.add(s);
        }
        let filters = &table.filters;
        table.untenanted.freeze(filters, index_min);
        table
            .tenants
            .values_mut()
            .for_each(|p| p.freeze(filters, index_min));
        table.fields.finish();
        table
    }

    fn add(&mut self, s: Subscriber) {
        let entry = self.filters.len() as u32;
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
        let key_field = key.map(|(_, path, _)| self.fields.intern(path));
        let filter: Box<[Node<FieldId>]> = key
            .map(|(i, _, _)| &nodes[i])
            .into_iter()
            .chain(
                nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| key.is_none_or(|(k, _, _)| k != *i))
                    .map(|(_, n)| n),
            )
            .map(|n| compile(n, &mut self.fields))
            .collect();
        let filtered = !filter.is_empty();
        self.filters.push(filter);

        let mut groups: Vec<u32> = s
            .subscription
            .patterns
            .iter()
            .map(|p| self.group_of(p))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let part = match &s.tenant {
            None => &mut self.untenanted,
            Some(t) => self
                .tenants
                .entry(TenantBytes::new(t.as_bytes()))
                .or_default(),
        };
        if part.entries.is_empty() {
            part.entries = entry..entry;
        }
        part.entries.end = entry + 1;
        let item = Item {
            lane: s.lane,
            entry: if filtered { entry } else { NO_FILTER },
        };
        for g in groups {
            self.reads_fields[g as usize] |= filtered;
            let pending = part.pending(g);
            match key_field {
                Some(field) => pending.keyed.push((field, item)),
                None => pending.items.push(item),
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
        self.filters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
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
        if let Some(part) = own.filter(|p| p.entries.len() <= WARM_MAX as usize) {
            std::hint::black_box(part.warm(&self.filters));
        }
        // The tenant-less part is in cache (every event reads it): walking
        // it first gives the tenant's lines time to arrive.
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
        let items = bucket.items.start as usize..bucket.items.end as usize;
        for item in part.items.get(items).unwrap_or_default() {
            if item.entry == NO_FILTER || self.holds(item.entry, 0, fields, data) {
                out.push(item.lane);
            }
        }
        for index in &bucket.by_value {
            if let Field::Value { text, .. } = fields.get(index.field, data) {
                for item in index.items.get(text).map_or(&[][..], Vec::as_slice) {
                    // The index has checked the first condition.
                    if self.holds(item.entry, 1, fields, data) {
                        out.push(item.lane);
                    }
                }
            }
        }
    }

    /// Whether the filter of `entry`, from its condition `from` on, holds.
    fn holds(&self, entry: u32, from: usize, fields: &Fields, data: &str) -> bool {
        let nodes = self
            .filters
            .get(entry as usize)
            .and_then(|f| f.get(from..))
            .unwrap_or_default();
        eval(nodes, &mut |&f, test: &Test| test.eval(fields.get(f, data)))
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
