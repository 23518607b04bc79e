//! The live (window, key) groups of a windowed CQ.
//!
//! A group is found by hashing its window start and its key in arrow's row format (the
//! bytes [`RowConverter`](arrow::row::RowConverter) makes of the GROUP BY values), so the
//! key is stored once, as bytes, and the group values are decoded from them only when a
//! group is emitted or checkpointed. Groups live in slots (reused after a window expires)
//! and each window lists its slots, so closing and expiring windows touch only the windows
//! concerned, never every live group: a tick costs the same with one key or a million.
//!
//! Why not DataFusion's `GroupsAccumulator`: its `evaluate` and `state` *take* the groups
//! they return (`EmitTo::All` / `First(n)`), while ON THRESHOLD must read the current value
//! of the few groups a batch touched and keep them. So each group keeps one
//! `Accumulator` per aggregate, and a batch updates each touched group once, with slices
//! of arrays taken once per batch (see `runtime.rs`).

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use datafusion::logical_expr::Accumulator;
use hashbrown::HashTable;

/// Index of a group's slot.
pub(crate) type GroupId = u32;

/// One (window, key): its key bytes, accumulators and emission flags.
#[derive(Debug)]
pub(crate) struct Group {
    pub start: i64,
    pub key: Box<[u8]>,
    pub accs: Box<[Box<dyn Accumulator>]>,
    pub threshold_fired: bool,
    pub closed: bool,
}

/// The groups of one window start.
#[derive(Debug, Default)]
struct Window {
    ids: Vec<GroupId>,
    /// Groups not yet emitted as closed.
    open: usize,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct GroupTable {
    slots: Vec<Option<Group>>,
    free: Vec<GroupId>,
    index: HashTable<GroupId>,
    hasher: hashbrown::DefaultHashBuilder,
    windows: BTreeMap<i64, Window>,
}

impl GroupTable {
    fn hash(&self, start: i64, key: &[u8]) -> u64 {
        self.hasher.hash_one((start, key))
    }

    /// Live groups.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// The group of (`start`, `key`), if live.
    pub fn find(&self, start: i64, key: &[u8]) -> Option<GroupId> {
        let hash = self.hash(start, key);
        self.index
            .find(hash, |&id| {
                self.slots[id as usize]
                    .as_ref()
                    .is_some_and(|g| g.start == start && *g.key == *key)
            })
            .copied()
    }

    /// Adds a group that [`find`](Self::find) did not find.
    pub fn insert(&mut self, start: i64, key: &[u8], accs: Box<[Box<dyn Accumulator>]>) -> GroupId {
        let group = Group {
            start,
            key: key.into(),
            accs,
            threshold_fired: false,
            closed: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(group);
                id
            }
            None => {
                self.slots.push(Some(group));
                GroupId::try_from(self.slots.len() - 1).unwrap_or(GroupId::MAX)
            }
        };
        let hash = self.hash(start, key);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, id, |&other| {
            slots[other as usize]
                .as_ref()
                .map_or(0, |g| hasher.hash_one((g.start, &*g.key)))
        });
        let window = self.windows.entry(start).or_default();
        window.ids.push(id);
        window.open += 1;
        id
    }

    /// The live group `id`.
    pub fn get(&self, id: GroupId) -> Option<&Group> {
        self.slots.get(id as usize).and_then(Option::as_ref)
    }

    /// The live group `id`, mutably.
    pub fn get_mut(&mut self, id: GroupId) -> Option<&mut Group> {
        self.slots.get_mut(id as usize).and_then(Option::as_mut)
    }

    /// Marks `id` emitted as closed.
    pub fn set_closed(&mut self, id: GroupId) {
        let Some(g) = self.get_mut(id).filter(|g| !g.closed) else {
            return;
        };
        g.closed = true;
        let start = g.start;
        if let Some(w) = self.windows.get_mut(&start) {
            w.open = w.open.saturating_sub(1);
        }
    }

    /// Sorts `ids` by (window start, key), the order in which groups are emitted and
    /// checkpointed.
    pub fn sort(&self, ids: &mut [GroupId]) {
        ids.sort_by(|&a, &b| {
            let (a, b) = (self.get(a), self.get(b));
            let a = a.map(|g| (g.start, &*g.key));
            let b = b.map(|g| (g.start, &*g.key));
            a.cmp(&b)
        });
    }

    /// The groups not yet closed of the windows starting before `before`, sorted.
    pub fn unclosed_before(&self, before: i64) -> Vec<GroupId> {
        let mut out = Vec::new();
        for (_, w) in self.windows.range(..before).filter(|(_, w)| w.open > 0) {
            let from = out.len();
            out.extend(
                w.ids
                    .iter()
                    .copied()
                    .filter(|&id| self.get(id).is_some_and(|g| !g.closed)),
            );
            self.sort(&mut out[from..]);
        }
        out
    }

    /// Forgets every group of the windows starting before `before`.
    pub fn remove_before(&mut self, before: i64) {
        let kept = self.windows.split_off(&before);
        let gone = std::mem::replace(&mut self.windows, kept);
        for (_, w) in gone {
            for id in w.ids {
                let Some(g) = self.slots.get_mut(id as usize).and_then(Option::take) else {
                    continue;
                };
                let hash = self.hasher.hash_one((g.start, &*g.key));
                if let Ok(entry) = self.index.find_entry(hash, |&other| other == id) {
                    entry.remove();
                }
                self.free.push(id);
            }
        }
        if self.index.is_empty() {
            // Nothing live: give the memory of a burst of keys back.
            self.slots = Vec::new();
            self.free = Vec::new();
            self.index = HashTable::new();
        }
    }

    /// Every live group, sorted as [`sort`](Self::sort) does.
    pub fn all_sorted(&self) -> Vec<GroupId> {
        let mut out = Vec::with_capacity(self.len());
        for w in self.windows.values() {
            let from = out.len();
            out.extend(w.ids.iter().copied());
            self.sort(&mut out[from..]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(keys: &[(i64, &[u8])]) -> (GroupTable, Vec<GroupId>) {
        let mut t = GroupTable::default();
        let ids = keys
            .iter()
            .map(|(s, k)| t.insert(*s, k, Box::new([])))
            .collect();
        (t, ids)
    }

    #[test]
    fn finds_sorts_closes_and_expires_by_window() {
        let (mut t, ids) = table(&[(60, b"b"), (0, b"z"), (0, b"a"), (60, b"a")]);
        assert_eq!(t.len(), 4);
        assert_eq!(t.find(0, b"a"), Some(ids[2]));
        assert_eq!(t.find(0, b"b"), None);
        assert_eq!(t.unclosed_before(60), vec![ids[2], ids[1]]);
        assert_eq!(t.all_sorted(), vec![ids[2], ids[1], ids[3], ids[0]]);
        t.set_closed(ids[2]);
        assert_eq!(t.unclosed_before(61), vec![ids[1], ids[3], ids[0]]);
        t.remove_before(60);
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(0, b"z"), None);
        assert_eq!(t.find(60, b"b"), Some(ids[0]));
        // A freed slot is reused and found again.
        let again = t.insert(120, b"q", Box::new([]));
        assert!(again == ids[1] || again == ids[2]);
        assert_eq!(t.find(120, b"q"), Some(again));
        assert_eq!(t.find(60, b"a"), Some(ids[3]));
        t.remove_before(i64::MAX);
        assert_eq!(t.len(), 0);
        assert_eq!(t.find(120, b"q"), None);
    }
}
