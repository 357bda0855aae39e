//! What one applied batch costs the watch hub as services grow: services of N instances (no
//! reader, no watcher), then batches of 64 re-registrations of random instances, timed; with
//! all of them in one service (a rollout), and spread over 20 services (many deployments).
//! `cargo run --release -p muster-server --example hub_batches`

use std::time::Instant;

use muster_core::{Command, Limits, RegisterRequest, Registry};
use muster_server::hub::Hub;

fn command(service: usize, i: usize, weight: u32) -> Command {
    let req: RegisterRequest = serde_json::from_value(serde_json::json!({
        "service": format!("svc-{service}"), "instanceId": format!("svc-{service}-{i:06}"),
        "host": "10.1.2.3",
        "port": 8080, "zone": "bench-a", "weight": weight, "status": "HEALTHY"}))
    .unwrap();
    let (spec, want_healthy) = req.validate().unwrap();
    Command::Register {
        spec: Box::new(spec),
        want_healthy,
        limits: Limits {
            max_instances_per_service: 1_000_000,
            ..Limits::default()
        },
        revive: false,
        at: 1_700_000_000_000,
    }
}

fn main() {
    for (services, size) in [
        (1, 100),
        (1, 1_000),
        (1, 10_000),
        (20, 100),
        (20, 1_000),
        (20, 10_000),
    ] {
        let mut reg = Registry::new();
        let hub = Hub::new(1000);
        let mut index = 0;
        let mut events = Vec::new();
        for s in 0..services {
            for i in 0..size {
                index += 1;
                reg.apply(index, &command(s, i, 100), &mut events)
                    .unwrap()
                    .unwrap();
            }
        }
        hub.applied(&reg, &events);
        // A fixed pseudo-random sequence of instances to change.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let batches = 2_000;
        let mut spent = std::time::Duration::ZERO;
        for b in 0..batches {
            events.clear();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                index += 1;
                let (s, i) = ((x >> 32) as usize % services, (x % size as u64) as usize);
                let cmd = command(s, i, 1 + (b % 100) as u32);
                reg.apply(index, &cmd, &mut events).unwrap().unwrap();
            }
            let t = Instant::now();
            hub.applied(&reg, &events);
            spent += t.elapsed();
        }
        println!(
            "{services:>2} service(s) of {size:>6}: {:>7.1} µs per batch of 64",
            spent.as_secs_f64() * 1e6 / batches as f64
        );
    }
}
