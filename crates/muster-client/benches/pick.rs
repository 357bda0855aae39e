//! A pick at 10, 100 and 1000 endpoints, per policy: time (criterion) and heap allocations
//! (counted with a counting allocator; a pick must make none). And the cost of a watch update
//! to a 1000-endpoint service: the view is rebuilt from the endpoints (what the resolver does
//! for each applied event).
//!
//! `cargo bench -p muster-client --bench pick`

use std::alloc::System;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use muster_client::{Endpoint, Policy, View, ViewConfig};
use muster_core::{Instance, RegisterRequest, Status};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let spec = RegisterRequest {
                service: Some("inventory-api".into()),
                instance_id: Some(format!("inventory-api-{i}")),
                host: Some("10.0.0.1".into()),
                port: Some(8080.into()),
                zone: Some(if i % 2 == 0 { "a1" } else { "a2" }.into()),
                region: Some("a".into()),
                weight: Some((50 + (i % 4) as u32 * 50).into()),
                ..Default::default()
            }
            .validate()
            .expect("valid")
            .0;
            Endpoint::new(Arc::new(Instance {
                spec,
                status: Status::Healthy,
                status_reason: "".into(),
                ready: true,
                live: true,
                registered_at: 0,
                status_changed_at: 0,
                create_index: 1,
                modify_index: 1,
            }))
        })
        .collect()
}

fn picks(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for policy in [
        Policy::WeightedRandom,
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::ConsistentHash,
    ] {
        for n in [10, 100, 1000] {
            let config = Arc::new(ViewConfig {
                policy,
                ..ViewConfig::default()
            });
            let view = View::new(endpoints(n), config);
            let key = b"user-4711".as_slice();
            let pick = || {
                let p = view.pick(Some(key)).expect("a pick");
                black_box(p.instance().spec.port);
            };
            // Allocations: none per pick.
            let region = Region::new(GLOBAL);
            for _ in 0..10_000 {
                pick();
            }
            let stats = region.change();
            println!(
                "allocations per pick ({policy:?}, {n} endpoints): {}",
                stats.allocations as f64 / 10_000.0
            );
            group.bench_with_input(BenchmarkId::new(format!("{policy:?}"), n), &n, |b, _| {
                b.iter(pick)
            });
        }
    }
    group.finish();
}

fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    let eps = endpoints(1000);
    for policy in [
        Policy::WeightedRandom,
        Policy::RoundRobin,
        Policy::LeastRequest,
        Policy::ConsistentHash,
    ] {
        let config = Arc::new(ViewConfig {
            policy,
            ..ViewConfig::default()
        });
        // An update that keeps the members (a metadata or status change that stays HEALTHY):
        // what is built for them is reused.
        let previous = View::new(eps.iter().cloned(), config.clone());
        group.bench_function(BenchmarkId::new(format!("{policy:?}"), 1000), |b| {
            b.iter(|| {
                black_box(View::after(
                    eps.iter().cloned(),
                    config.clone(),
                    Some(&previous),
                ))
            })
        });
        // Members changed (one instance left), as the resolver applies it: what still fits is
        // reused, a consistent-hashing ring is rebuilt later, off the pick path.
        let one_less: Vec<Endpoint> = eps.iter().skip(1).cloned().collect();
        group.bench_function(
            BenchmarkId::new(format!("{policy:?}-member-left"), 1000),
            |b| {
                b.iter(|| {
                    black_box(View::after_deferred(
                        one_less.iter().cloned(),
                        config.clone(),
                        Some(&previous),
                    ))
                })
            },
        );
        // Everything built afresh (the deferred ring's rebuild, or a first view).
        group.bench_function(BenchmarkId::new(format!("{policy:?}-fresh"), 1000), |b| {
            b.iter(|| black_box(View::new(eps.iter().cloned(), config.clone())))
        });
    }
    group.finish();
}

criterion_group!(benches, picks, updates);
criterion_main!(benches);
