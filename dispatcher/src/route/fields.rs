//! Reading every field the routing table needs out of `data` in one pass.
//!
//! The fields that filters (and a `data.` tenant key) name are numbered
//! once, when the table is built, and arranged as a tree of keys. Per event
//! one scan over `data` visits its keys once, descends only into objects on
//! the way to a wanted field, and notes where each wanted value lies; every
//! condition then reads its field from there. The cost is that of the
//! bytes of `data`, not of the number of endpoints or filters.
//!
//! Duplicated keys fail closed, exactly as [`transports::json::lookup`]:
//! a wanted key seen twice at one level makes its field, and every field
//! below it, [`Field::Ambiguous`].

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::filter::{Field, Path};

/// A field's number in a [`FieldSet`].
pub(crate) type FieldId = u32;

/// Above this many wanted keys at one level, look keys up by hash rather
/// than by comparing each.
const FEW: usize = 8;

/// The wanted fields, as a tree of keys. Node 0 is `data` itself.
#[derive(Debug, Clone)]
pub(crate) struct FieldSet {
    nodes: Vec<TrieNode>,
    /// Per field, its node (to mark what lies below it).
    field_nodes: Vec<u32>,
    ids: HashMap<Path, FieldId>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    field: Option<FieldId>,
    children: Children,
    /// Nodes below this one, this one excluded: `self+1 .. self+1+below`
    /// once [`FieldSet::finish`] has numbered them depth first.
    below: u32,
}

#[derive(Debug, Clone)]
enum Children {
    Few(Vec<(Box<str>, u32)>),
    Many(HashMap<Box<str>, u32>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

impl Children {
    fn get(&self, key: &str) -> Option<u32> {
        match self {
            Children::Few(list) => list.iter().find(|(k, _)| **k == *key).map(|(_, n)| *n),
            Children::Many(map) => map.get(key).copied(),
        }
    }

    /// Build time only.
    fn entries(&self) -> Vec<(&str, u32)> {
        match self {
            Children::Few(list) => list.iter().map(|(k, n)| (&**k, *n)).collect(),
            Children::Many(map) => map.iter().map(|(k, n)| (&**k, *n)).collect(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Few(list) => list.is_empty(),
            Children::Many(map) => map.is_empty(),
        }
    }
}

impl Default for FieldSet {
    fn default() -> Self {
        FieldSet {
            nodes: vec![TrieNode::default()],
            field_nodes: Vec::new(),
            ids: HashMap::new(),
        }
    }
}

impl FieldSet {
    /// The number of `path`, adding it when new.
    pub(crate) fn intern(&mut self, path: &Path) -> FieldId {
        if let Some(&id) = self.ids.get(path) {
            return id;
        }
        let mut node = 0usize;
        for key in path.iter() {
            node = match self.nodes[node].children.get(key) {
                Some(child) => child as usize,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    match &mut self.nodes[node].children {
                        Children::Few(list) => list.push((key.clone(), child as u32)),
                        Children::Many(map) => {
                            map.insert(key.clone(), child as u32);
                        }
                    }
                    child
                }
            };
        }
        let id = self.field_nodes.len() as FieldId;
        self.nodes[node].field = Some(id);
        self.field_nodes.push(node as u32);
        self.ids.insert(path.clone(), id);
        id
    }

    pub(crate) fn len(&self) -> usize {
        self.field_nodes.len()
    }

    /// Renumber the nodes depth first (so a node's subtree is a range) and
    /// switch wide levels to hashing. Called once, after the last `intern`.
    pub(crate) fn finish(&mut self) {
        let mut order = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![0u32];
        while let Some(n) = stack.pop() {
            order.push(n);
            let mut kids: Vec<u32> = self.nodes[n as usize]
                .children
                .entries()
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            kids.sort_unstable();
            stack.extend(kids.into_iter().rev());
        }
        let mut new_of = vec![0u32; self.nodes.len()];
        for (new, &old) in order.iter().enumerate() {
            new_of[old as usize] = new as u32;
        }
        let mut old_nodes: Vec<Option<TrieNode>> = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(Some)
            .collect();
        let mut nodes = Vec::with_capacity(order.len());
        for &old in &order {
            let mut node = old_nodes[old as usize].take().unwrap_or_default();
            let kids: Vec<(Box<str>, u32)> = node
                .children
                .entries()
                .into_iter()
                .map(|(k, c)| (Box::from(k), new_of[c as usize]))
                .collect();
            node.children = if kids.len() > FEW {
                Children::Many(kids.into_iter().collect())
            } else {
                Children::Few(kids)
            };
            nodes.push(node);
        }
        // Subtree sizes, children before parents: walk the order backwards.
        for i in (0..nodes.len()).rev() {
            let below: u32 = nodes[i]
                .children
                .entries()
                .into_iter()
                .map(|(_, c)| 1 + nodes[c as usize].below)
                .sum();
            nodes[i].below = below;
        }
        for node in self.field_nodes.iter_mut() {
            *node = new_of[*node as usize];
        }
        self.nodes = nodes;
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// Where one wanted field lies in the current event's `data`.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// The event this slot was written for; any other means absent.
    stamp: u32,
    ambiguous: bool,
    raw: Range<usize>,
    /// The decoded text when the value is a string with escapes.
    decoded: Option<String>,
    /// Where the text to compare lies, when it is a slice of `data`.
    text: Range<usize>,
}

/// The per-event state of field reads, reused from event to event so that
/// reading allocates nothing (but for strings with escape sequences).
#[derive(Debug, Default)]
pub(crate) struct Fields {
    stamp: u32,
    slots: Vec<Slot>,
    /// Per trie node, the event in which its key was last seen.
    seen: Vec<u32>,
}

impl Fields {
    /// Sized for `set`; forgets everything read.
    pub(crate) fn reset(&mut self, set: &FieldSet) {
        self.stamp = 0;
        self.slots = vec![Slot::default(); set.len()];
        self.seen = vec![0; set.node_count()];
    }

    /// Start a new event: everything reads as absent until `read`.
    pub(crate) fn next_event(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            // After 2^32 events the stamps come round: clear them once.
            self.slots.iter_mut().for_each(|s| s.stamp = 0);
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.stamp = 1;
        }
    }

    /// Read every field of `set` out of `data` (one pass).
    pub(crate) fn read(&mut self, set: &FieldSet, data: &str) {
        if set.len() == 0 {
            return;
        }
        let mut walk = Walk {
            set,
            fields: self,
            base: data.as_ptr() as usize,
        };
        if walk.object(0, data).is_err() {
            // Not reachable for a decoded event (`data` is valid JSON);
            // should it happen, nothing may match on what was half read.
            walk.ambiguous(0);
        }
    }

    /// Field `id` as the last `read` found it in `data`.
    pub(crate) fn get<'a>(&'a self, id: FieldId, data: &'a str) -> Field<'a> {
        let Some(slot) = self.slots.get(id as usize) else {
            return Field::Absent;
        };
        if slot.stamp != self.stamp {
            return Field::Absent;
        }
        if slot.ambiguous {
            return Field::Ambiguous;
        }
        let (Some(raw), Some(text)) = (
            data.get(slot.raw.clone()),
            match &slot.decoded {
                Some(s) => Some(s.as_str()),
                None => data.get(slot.text.clone()),
            },
        ) else {
            return Field::Ambiguous;
        };
        Field::Value { raw, text }
    }
}

struct Walk<'s> {
    set: &'s FieldSet,
    fields: &'s mut Fields,
    /// Address of `data`, to turn the slices serde hands out into ranges.
    base: usize,
}

impl Walk<'_> {
    /// Visit the JSON object `json`, whose keys are the children of `node`.
    fn object(&mut self, node: u32, json: &str) -> Result<(), serde_json::Error> {
        if !transports::json::is_object(json.as_bytes()) {
            return Ok(());
        }
        let mut de = serde_json::Deserializer::from_str(json);
        KeysOf { walk: self, node }.deserialize(&mut de)?;
        de.end()
    }

    /// The wanted key of `node` was seen with value `raw`.
    fn found(&mut self, node: u32, raw: &str) {
        let stamp = self.fields.stamp;
        let seen = &mut self.fields.seen[node as usize];
        if *seen == stamp {
            self.ambiguous(node);
            return;
        }
        *seen = stamp;
        let set = self.set;
        let trie = &set.nodes[node as usize];
        if let Some(id) = trie.field {
            let start = raw.as_ptr() as usize - self.base;
            let slot = &mut self.fields.slots[id as usize];
            slot.stamp = stamp;
            slot.ambiguous = false;
            slot.raw = start..start + raw.len();
            slot.decoded = None;
            slot.text = slot.raw.clone();
            if raw.starts_with('"') {
                if raw.contains('\\') {
                    match super::filter::text_of(raw) {
                        Some(text) => slot.decoded = Some(text.into_owned()),
                        None => slot.ambiguous = true,
                    }
                } else {
                    slot.text = start + 1..start + raw.len() - 1;
                }
            }
        }
        if !trie.children.is_empty() && self.object(node, raw).is_err() {
            self.ambiguous(node);
        }
    }

    /// `node` and everything below it have no single value.
    fn ambiguous(&mut self, node: u32) {
        let stamp = self.fields.stamp;
        let below = self.set.nodes[node as usize].below;
        for n in node..=node + below {
            self.fields.seen[n as usize] = stamp;
            if let Some(id) = self.set.nodes[n as usize].field {
                let slot = &mut self.fields.slots[id as usize];
                slot.stamp = stamp;
                slot.ambiguous = true;
            }
        }
    }
}

/// Walks one JSON object, handing wanted keys' values to the [`Walk`] and
/// skipping the rest.
struct KeysOf<'w, 's> {
    walk: &'w mut Walk<'s>,
    node: u32,
}

impl<'de> DeserializeSeed<'de> for KeysOf<'_, '_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeysOf<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let set = self.walk.set;
        let children = &set.nodes[self.node as usize].children;
        while let Some(key) = map.next_key_seed(transports::json::JsonStr)? {
            match children.get(&key) {
                Some(child) => {
                    let raw = map.next_value::<&'de RawValue>()?;
                    self.walk.found(child, raw.get());
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use transports::json::{lookup, Lookup};

    fn path(p: &str) -> Path {
        super::super::filter::parse_path(&format!("data.{p}")).unwrap()
    }

    /// Every path reads as `lookup` reads it, duplicates and all.
    #[test]
    fn one_pass_reads_what_lookup_reads() {
        let paths = [
            "a", "a.b", "a.c", "s", "s.x", "d", "d.x", "n", "e", "z", "o.p.q",
        ];
        let mut set = FieldSet::default();
        let ids: Vec<FieldId> = paths.iter().map(|p| set.intern(&path(p))).collect();
        set.finish();
        let mut fields = Fields::default();
        fields.reset(&set);
        for data in [
            r#"{"a":{"b":1,"c":"x\u0021"},"s":"str","d":1,"d":{"x":2},"n":null,"e":"esc\"aped"}"#,
            r#"{"a":{"b":1,"b":2},"o":{"p":{"q":[1]},"p":{}}}"#,
            r#"{"a":{"c":"y"},"a":{"b":1}}"#,
            r#"{"z":{"deep":{"x":[1,{"y":2}]}},"s":{"x":"nested"}}"#,
            r#"{}"#,
        ] {
            fields.next_event();
            fields.read(&set, data);
            for (p, &id) in paths.iter().zip(&ids) {
                let segments: Vec<&str> = p.split('.').collect();
                let want = lookup(data.as_bytes(), &segments);
                let got = fields.get(id, data);
                match (want, got) {
                    (Lookup::Absent, Field::Absent) | (Lookup::Ambiguous, Field::Ambiguous) => {}
                    (Lookup::Found(raw), Field::Value { raw: got_raw, text }) => {
                        assert_eq!(raw.get(), got_raw, "{p} in {data}");
                        assert_eq!(
                            super::super::filter::text_of(raw.get()).unwrap(),
                            text,
                            "{p} in {data}"
                        );
                    }
                    (want, got) => panic!("{p} in {data}: lookup {want:?}, one pass {got:?}"),
                }
            }
        }
    }

    #[test]
    fn wide_levels_and_stamps() {
        let mut set = FieldSet::default();
        let ids: Vec<FieldId> = (0..20)
            .map(|i| set.intern(&path(&format!("k{i}"))))
            .collect();
        assert_eq!(set.intern(&path("k3")), ids[3], "interned once");
        set.finish();
        let mut fields = Fields::default();
        fields.reset(&set);
        fields.next_event();
        fields.read(&set, r#"{"k3":"v","k19":7}"#);
        assert!(matches!(
            fields.get(ids[3], r#"{"k3":"v","k19":7}"#),
            Field::Value { text: "v", .. }
        ));
        // The next event forgets the last one's fields without clearing them.
        fields.next_event();
        fields.read(&set, r#"{"k4":1}"#);
        assert!(matches!(fields.get(ids[3], r#"{"k4":1}"#), Field::Absent));
        assert!(matches!(
            fields.get(ids[4], r#"{"k4":1}"#),
            Field::Value { raw: "1", .. }
        ));
        fields.stamp = u32::MAX;
        fields.next_event();
        assert_eq!(fields.stamp, 1);
        assert!(matches!(fields.get(ids[4], "{}"), Field::Absent));
    }
}
