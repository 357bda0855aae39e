//! A service's instances in id order, in shared chunks.
//!
//! Every applied batch makes a new view of each service it touches, and the old view stays
//! readable (a lookup or watcher may hold it). As one flat list, the new view copied every
//! instance pointer of the service (and the old one dropped them all later): O(service size)
//! per touched service per batch, so registrations slowed as services grew. Here the list is
//! chunks of at most [`MAX_CHUNK`] pointers behind shared pointers: a new view copies the list
//! of chunks and only the chunks the batch changes. (A service whose old view was read still
//! costs O(size) per batch: the JSON it carries over is a flat list by position. A read costs
//! that much anyway.)

use std::sync::Arc;

use muster_core::Instance;

/// Most instances in one chunk; a fuller one is split in two.
const MAX_CHUNK: usize = 64;
/// A chunk this small is merged with its successor when both fit in one.
const MIN_CHUNK: usize = MAX_CHUNK / 4;

/// Instances ordered by id; cloning shares every chunk.
#[derive(Clone, Default)]
pub struct Instances {
    chunks: Vec<Arc<Vec<Arc<Instance>>>>,
    /// Instances before each chunk.
    starts: Vec<usize>,
    len: usize,
}

/// Where an upsert went.
pub(crate) enum Upserted {
    /// Replaced the instance at this position (the old one given back).
    Replaced(usize, Arc<Instance>),
    /// Inserted at this position.
    Inserted(usize),
}

fn id(i: &Instance) -> &str {
    i.spec.instance_id.as_str()
}

impl Instances {
    /// From instances already ordered by id, without repeats.
    pub fn from_sorted(instances: Vec<Arc<Instance>>) -> Self {
        debug_assert!(instances.windows(2).all(|w| id(&w[0]) < id(&w[1])));
        let mut list = Instances {
            chunks: instances
                .chunks(MAX_CHUNK / 2)
                .map(|c| Arc::new(c.to_vec()))
                .collect(),
            ..Instances::default()
        };
        list.recount();
        list
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The instance at position `k` (`k < len`).
    pub fn get(&self, k: usize) -> &Arc<Instance> {
        let c = self.starts.partition_point(|&s| s <= k) - 1;
        &self.chunks[c][k - self.starts[c]]
    }

    /// Every instance, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Instance>> + Clone {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// The chunk that holds or would hold `id`, and the position within it.
    fn locate(&self, target: &str) -> (usize, Result<usize, usize>) {
        let c = self
            .chunks
            .partition_point(|ch| ch.last().is_some_and(|l| id(l) < target))
            .min(self.chunks.len().saturating_sub(1));
        let within = self
            .chunks
            .get(c)
            .map_or(Err(0), |ch| ch.binary_search_by(|i| id(i).cmp(target)));
        (c, within)
    }

    /// Chunk `c`, unshared, with room for `extra` more and no more: chunks are sized exactly
    /// (a `Vec` that doubles would leave a split chunk's half empty, a view's worth of pointers).
    fn chunk_mut(&mut self, c: usize, extra: usize) -> &mut Vec<Arc<Instance>> {
        let chunk = &mut self.chunks[c];
        if Arc::get_mut(chunk).is_none() {
            let mut copy = Vec::with_capacity(chunk.len() + extra);
            copy.extend(chunk.iter().cloned());
            *chunk = Arc::new(copy);
        }
        let chunk = Arc::get_mut(chunk).expect("unshared");
        chunk.reserve_exact(extra);
        chunk
    }

    /// Puts `inst` in place of the instance with its id, or inserts it.
    pub(crate) fn upsert(&mut self, inst: Arc<Instance>) -> Upserted {
        if self.chunks.is_empty() {
            self.chunks.push(Arc::new(Vec::new()));
            self.starts.push(0);
        }
        let (c, within) = self.locate(id(&inst));
        match within {
            Ok(p) => {
                let old = std::mem::replace(&mut self.chunk_mut(c, 0)[p], inst);
                Upserted::Replaced(self.starts[c] + p, old)
            }
            Err(p) => {
                let at = self.starts[c] + p;
                let len = self.chunks[c].len();
                if len < MAX_CHUNK {
                    self.chunk_mut(c, 1).insert(p, inst);
                } else if p == len {
                    // Past the last instance (ids that grow, as most naming schemes make
                    // them): a new chunk, so that this one stays full.
                    self.chunks.insert(c + 1, Arc::new(vec![inst]));
                    self.starts.insert(c + 1, 0);
                } else {
                    let chunk = self.chunk_mut(c, 0);
                    let mut second: Vec<_> = chunk.drain(len / 2..).collect();
                    chunk.shrink_to_fit();
                    if p <= len / 2 {
                        chunk.reserve_exact(1);
                        chunk.insert(p, inst);
                    } else {
                        second.reserve_exact(1);
                        second.insert(p - len / 2, inst);
                    }
                    self.chunks.insert(c + 1, Arc::new(second));
                    self.starts.insert(c + 1, 0);
                }
                self.recount();
                Upserted::Inserted(at)
            }
        }
    }

    /// Takes out the instance with id `target`: its position and the instance.
    pub(crate) fn remove(&mut self, target: &str) -> Option<(usize, Arc<Instance>)> {
        let (c, Ok(p)) = self.locate(target) else {
            return None;
        };
        let at = self.starts[c] + p;
        let gone = self.chunk_mut(c, 0).remove(p);
        if self.chunks[c].is_empty() {
            self.chunks.remove(c);
            self.starts.remove(c);
        } else if c + 1 < self.chunks.len()
            && self.chunks[c].len() < MIN_CHUNK
            && self.chunks[c].len() + self.chunks[c + 1].len() <= MAX_CHUNK
        {
            let next = self.chunks.remove(c + 1);
            self.starts.remove(c + 1);
            self.chunk_mut(c, next.len()).extend(next.iter().cloned());
        }
        self.recount();
        Some((at, gone))
    }

    /// Recomputes `starts` and `len` (O(chunks)).
    fn recount(&mut self) {
        self.starts.clear();
        let mut n = 0;
        for c in &self.chunks {
            self.starts.push(n);
            n += c.len();
        }
        self.len = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::RegisterRequest;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn instance(id: u16, weight: u32) -> Arc<Instance> {
        let req = RegisterRequest {
            service: Some("svc".into()),
            instance_id: Some(format!("i-{id:05}")),
            host: Some("10.0.0.1".into()),
            port: Some(8080.into()),
            weight: Some(weight.into()),
            ..Default::default()
        };
        let (spec, _) = req.validate().expect("valid");
        let mut reg = muster_core::Registry::new();
        let mut events = Vec::new();
        let cmd = muster_core::Command::Register {
            spec: Box::new(spec),
            want_healthy: true,
            limits: muster_core::Limits::default(),
            revive: false,
            at: 1,
        };
        reg.apply(1, &cmd, &mut events).unwrap().unwrap();
        reg.get(&format!("i-{id:05}")).unwrap().clone()
    }

    fn check(list: &Instances, model: &BTreeMap<u16, u32>) {
        assert_eq!(list.len(), model.len());
        let got: Vec<(String, u32)> = list
            .iter()
            .map(|i| (i.spec.instance_id.to_string(), i.spec.weight))
            .collect();
        let want: Vec<(String, u32)> = model
            .iter()
            .map(|(id, w)| (format!("i-{id:05}"), *w))
            .collect();
        assert_eq!(got, want);
        for (k, (id, _)) in want.iter().enumerate() {
            assert_eq!(list.get(k).spec.instance_id.as_str(), id);
        }
        assert!(
            list.chunks
                .iter()
                .all(|c| !c.is_empty() && c.len() <= MAX_CHUNK)
        );
    }

    proptest! {
        /// Upserts and removals in any order keep the list equal to an ordered map, report the
        /// positions an ordered list would, and leave an earlier clone (an old view) as it was.
        #[test]
        fn behaves_like_an_ordered_map(
            initial in prop::collection::btree_map(0u16..500, 1u32..100, 0..200),
            ops in prop::collection::vec((any::<bool>(), 0u16..500, 1u32..100), 0..400),
        ) {
            let mut model = initial.clone();
            let mut list = Instances::from_sorted(
                initial.iter().map(|(&id, &w)| instance(id, w)).collect(),
            );
            check(&list, &model);
            for (n, (insert, id, w)) in ops.into_iter().enumerate() {
                let before = list.clone();
                let before_model = model.clone();
                let rank = model.range(..id).count();
                if insert {
                    match list.upsert(instance(id, w)) {
                        Upserted::Replaced(at, old) => {
                            prop_assert_eq!(at, rank);
                            prop_assert_eq!(Some(old.spec.weight), model.insert(id, w));
                        }
                        Upserted::Inserted(at) => {
                            prop_assert_eq!(at, rank);
                            prop_assert_eq!(model.insert(id, w), None);
                        }
                    }
                } else {
                    let gone = list.remove(&format!("i-{id:05}"));
                    prop_assert_eq!(gone.as_ref().map(|(at, _)| *at), model.contains_key(&id).then_some(rank));
                    prop_assert_eq!(gone.map(|(_, i)| i.spec.weight), model.remove(&id));
                }
                check(&list, &model);
                if n % 16 == 0 {
                    check(&before, &before_model);
                }
            }
        }
    }
}
