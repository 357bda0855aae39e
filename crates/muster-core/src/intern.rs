//! One shared copy of each repeated string in the registry.
//!
//! Most of an instance's strings repeat across instances: its service, zone, region, version,
//! deployment group, protocol, tags, metadata and status reason are shared by many (a thousand
//! instances of a service in three zones hold three zone strings, not a thousand). The registry
//! keeps one `ArcStr` of each (a reference-counted string behind a single pointer: 8 bytes in
//! the instance, where `Arc<str>` takes 16) and points every instance at it, so an instance
//! costs a pointer per field instead of an allocation per field. Ids and hosts are mostly unique (a host per
//! pod or VM): they are not interned.
//!
//! Interning changes no value, only where it lives: state built with or without it compares
//! equal and snapshots the same bytes.
//!
//! # Bounds
//!
//! Strings no instance refers to any more are dropped by a sweep that runs when the table has
//! doubled since the last one, or when as many instances were removed since as the table holds
//! strings: the table holds about twice the distinct strings in use at most, and the sweeps
//! cost O(1) amortized per insertion or removal.

use std::collections::HashSet;

use arcstr::ArcStr;

use crate::model::{Instance, InstanceSpec, Metadata};

/// Smallest table size at which a sweep runs.
const MIN_SWEEP: usize = 1024;

/// The shared strings.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    strings: HashSet<ArcStr>,
    /// Table size after the last sweep.
    swept_at: usize,
    /// Instances removed since the last sweep.
    removed: usize,
}

impl Interner {
    /// The shared copy of `s`.
    pub(crate) fn get(&mut self, s: &ArcStr) -> ArcStr {
        if s.is_empty() {
            return s.clone();
        }
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        if self.strings.len() >= MIN_SWEEP.max(2 * self.swept_at) {
            self.sweep();
        }
        self.strings.insert(s.clone());
        s.clone()
    }

    /// Points every repeated string of `spec` at its shared copy. The instance id is unique:
    /// it is not interned (the registry shares it with its own keys instead).
    pub(crate) fn spec(&mut self, spec: &mut InstanceSpec) {
        for field in [
            &mut spec.service,
            &mut spec.zone,
            &mut spec.region,
            &mut spec.version,
            &mut spec.deployment_group,
            &mut spec.protocol,
        ] {
            *field = self.get(field);
        }
        for tag in spec.tags.iter_mut() {
            *tag = self.get(tag);
        }
        spec.metadata = Metadata::from_sorted(
            spec.metadata
                .entries()
                .iter()
                .map(|(k, v)| (self.get(k), self.get(v)))
                .collect(),
        );
    }

    /// Points an instance's status reason at its shared copy.
    pub(crate) fn reason(&mut self, inst: &mut Instance) {
        inst.status_reason = self.get(&inst.status_reason);
    }

    /// An instance was removed: some strings may be unused now.
    pub(crate) fn removed(&mut self) {
        self.removed += 1;
        if self.removed >= MIN_SWEEP.max(self.strings.len()) {
            self.sweep();
        }
    }

    /// Drops every string only the table refers to.
    fn sweep(&mut self) {
        self.strings
            .retain(|s| ArcStr::strong_count(s).is_some_and(|n| n > 1));
        self.strings.shrink_to(2 * self.strings.len());
        self.swept_at = self.strings.len();
        self.removed = 0;
    }

    /// Strings held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.strings.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let mut i = Interner::default();
        let a = i.get(&ArcStr::from("zone-a"));
        let b = i.get(&ArcStr::from("zone-a"));
        assert!(ArcStr::ptr_eq(&a, &b));
        assert!(!ArcStr::ptr_eq(&a, &i.get(&ArcStr::from("zone-b"))));
    }

    #[test]
    fn unused_strings_are_swept_and_the_table_stays_bounded() {
        let mut i = Interner::default();
        let kept: Vec<ArcStr> = (0..100)
            .map(|n| i.get(&format!("kept-{n}").into()))
            .collect();
        for n in 0..100_000 {
            drop(i.get(&format!("gone-{n}").into()));
            assert!(i.len() <= 2 * MIN_SWEEP + 100, "table grew to {}", i.len());
        }
        for (n, k) in kept.iter().enumerate() {
            assert!(ArcStr::ptr_eq(k, &i.get(&format!("kept-{n}").into())));
        }
    }

    #[test]
    fn removals_alone_sweep_the_table() {
        let mut i = Interner::default();
        let held: Vec<ArcStr> = (0..50_000)
            .map(|n| i.get(&format!("s-{n}").into()))
            .collect();
        let table = i.len();
        assert!(table >= 25_000, "{table}");
        // Every instance goes and no new string arrives: the removals sweep.
        drop(held);
        for _ in 0..table {
            i.removed();
        }
        assert_eq!(i.len(), 0);
    }
}
