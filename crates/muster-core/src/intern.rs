//! One shared copy of each repeated string and profile in the registry.
//!
//! Most of an instance is what the other instances of its deployment have too: its service,
//! zone, region, version, deployment group, protocol, tags, metadata and lease length (its
//! [`Profile`]), and its status reason. The registry keeps one copy of each distinct profile
//! and points every instance at it (a thousand instances of a service in three zones hold three
//! profiles, not a thousand), and one copy of each string, so profiles that differ in one label
//! share the others. Ids and hosts are mostly unique (a host per pod or VM): they are not
//! interned; an instance with a port or weight of its own costs nothing more (they are not in
//! the profile).
//!
//! Interning changes no value, only where it lives: state built with or without it compares
//! equal and snapshots the same bytes.
//!
//! # Bounds
//!
//! Strings and profiles no instance refers to any more are dropped by a sweep that runs when a
//! table has doubled since the last one, or when as many instances were removed since as the
//! larger table holds: the tables hold about twice what is in use at most, and the sweeps cost
//! O(1) amortized per insertion or removal.

use std::collections::HashSet;
use std::sync::Arc;

use arcstr::ArcStr;

use crate::model::{Instance, InstanceSpec, Metadata, Profile};

/// Smallest table size at which a sweep runs.
const MIN_SWEEP: usize = 1024;

/// The shared strings and profiles.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    strings: HashSet<ArcStr>,
    profiles: HashSet<Arc<Profile>>,
    /// Sizes of the tables after the last sweep.
    swept_at: (usize, usize),
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
        if self.strings.len() >= MIN_SWEEP.max(2 * self.swept_at.0) {
            self.sweep();
        }
        self.strings.insert(s.clone());
        s.clone()
    }

    /// Points `spec` at the shared copy of its profile. The instance id is unique: it is not
    /// interned (the registry shares it with its own keys instead).
    pub(crate) fn spec(&mut self, spec: &mut InstanceSpec) {
        if let Some(shared) = self.profiles.get(&*spec.profile) {
            if !Arc::ptr_eq(shared, &spec.profile) {
                spec.profile = shared.clone();
            }
            return;
        }
        if self.profiles.len() >= MIN_SWEEP.max(2 * self.swept_at.1) {
            self.sweep();
        }
        let p = &*spec.profile;
        let profile = Arc::new(Profile {
            service: self.get(&p.service),
            zone: self.get(&p.zone),
            region: self.get(&p.region),
            version: self.get(&p.version),
            deployment_group: self.get(&p.deployment_group),
            protocol: self.get(&p.protocol),
            tags: p.tags.iter().map(|t| self.get(t)).collect(),
            metadata: Metadata::from_sorted(
                p.metadata
                    .entries()
                    .iter()
                    .map(|(k, v)| (self.get(k), self.get(v)))
                    .collect(),
            ),
            lease_ttl: p.lease_ttl,
        });
        self.profiles.insert(profile.clone());
        spec.profile = profile;
    }

    /// Points an instance's status reason at its shared copy.
    pub(crate) fn reason(&mut self, inst: &mut Instance) {
        inst.status_reason = self.get(&inst.status_reason);
    }

    /// An instance was removed: some strings and profiles may be unused now.
    pub(crate) fn removed(&mut self) {
        self.removed += 1;
        if self.removed >= MIN_SWEEP.max(self.strings.len().max(self.profiles.len())) {
            self.sweep();
        }
    }

    /// Drops every profile and string only the tables refer to (profiles first: they hold
    /// strings).
    fn sweep(&mut self) {
        self.profiles.retain(|p| Arc::strong_count(p) > 1);
        self.profiles.shrink_to(2 * self.profiles.len());
        self.strings
            .retain(|s| ArcStr::strong_count(s).is_some_and(|n| n > 1));
        self.strings.shrink_to(2 * self.strings.len());
        self.swept_at = (self.strings.len(), self.profiles.len());
        self.removed = 0;
    }

    /// Strings held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.strings.len()
    }

    /// Profiles held.
    #[cfg(test)]
    pub(crate) fn profiles(&self) -> usize {
        self.profiles.len()
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

    fn spec(zone: &str) -> InstanceSpec {
        let req = crate::RegisterRequest {
            service: Some("pay".into()),
            instance_id: Some("p1".into()),
            host: Some("10.0.0.1".into()),
            port: Some(8080.into()),
            zone: Some(zone.into()),
            ..Default::default()
        };
        req.validate().expect("valid").0
    }

    #[test]
    fn equal_profiles_share_one_copy_and_unused_ones_are_swept() {
        let mut i = Interner::default();
        let mut a = spec("z1");
        i.spec(&mut a);
        let mut b = spec("z1");
        i.spec(&mut b);
        assert!(Arc::ptr_eq(&a.profile, &b.profile));
        let mut c = spec("z2");
        i.spec(&mut c);
        assert!(!Arc::ptr_eq(&a.profile, &c.profile));
        assert!(ArcStr::ptr_eq(a.service(), c.service()));
        assert_eq!(c, spec("z2"), "interning changes no value");
        for n in 0..20_000 {
            let mut gone = spec(&format!("gone-{n}"));
            i.spec(&mut gone);
            assert!(i.profiles() <= 2 * MIN_SWEEP + 2, "{}", i.profiles());
        }
        let mut again = spec("z1");
        i.spec(&mut again);
        assert!(
            Arc::ptr_eq(&a.profile, &again.profile),
            "a profile in use stays"
        );
        drop((a, b, c, again));
        for _ in 0..MIN_SWEEP.max(i.len()) {
            i.removed();
        }
        assert_eq!((i.profiles(), i.len()), (0, 0));
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
