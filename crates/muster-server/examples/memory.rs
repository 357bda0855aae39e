//! Where the server's memory per instance goes: anonymous RSS per instance added by each
//! in-memory structure (the registry, the service views and their history, the lease table) as
//! 100,000 instances of 1,000 services (shaped like the benchmark's) are applied in batches of
//! 64, then by one lookup of every service. Without Raft, storage or HTTP; docs/benchmarks.md
//! has the whole server's figure.
//!
//! `cargo run --release -p muster-server --example memory`; with `-- unique`, each instance's
//! metadata also names the instance (`"pod": <its id>`), so no two instances share a profile
//! (the registry's worst case).

use muster_core::{Command, Limits, RegisterRequest, Registry};
use muster_server::hub::Hub;
use muster_server::leases::Leases;

fn live() -> isize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<isize>()
        .unwrap()
        * 1024
}

fn main() {
    const N: usize = 100_000;
    const SERVICES: usize = 1000;
    let unique = std::env::args().nth(1).as_deref() == Some("unique");
    // Made one at a time and dropped once applied, as the server drops log entries: what the
    // registry keeps of a command (its id, host, ...) counts, the rest does not.
    let command = |i: usize| {
        let svc = format!("svc-{}", i % SERVICES);
        let req: RegisterRequest = serde_json::from_value(serde_json::json!({
        "service": svc, "instanceId": format!("{svc}-{i}"), "host": "10.1.2.3",
        "port": 8080, "zone": "bench-a", "region": "bench", "version": "1.0.0",
        "weight": 100, "status": "HEALTHY", "leaseTtl": "30000ms",
        "metadata": if unique {
            serde_json::json!({"team": "bench", "pod": format!("{svc}-{i}")})
        } else {
            serde_json::json!({"team": "bench"})
        }}))
        .unwrap();
        let (spec, want_healthy) = req.validate().unwrap();
        Command::Register {
            spec: Box::new(spec),
            want_healthy,
            limits: Limits::default(),
            revive: false,
            at: 1_700_000_000_000,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut reg = Registry::new();
        let hub = Hub::new(1000);
        let leases = Leases::default();
        // Every command makes one event: batch k is events[64k..] of registered[64k..].
        let mut events = Vec::with_capacity(N);
        let mut registered = Vec::with_capacity(N);
        let r0 = live();
        for k in 0..N {
            match reg.apply(k as u64 + 1, &command(k), &mut events) {
                Ok(Ok(muster_core::Applied::Registered { instance, .. })) => {
                    registered.push(instance)
                }
                other => panic!("registration {k} failed: {other:?}"),
            }
        }
        assert_eq!(events.len(), registered.len());
        let r1 = live();
        for batch in events.chunks(64) {
            hub.applied(&reg, batch);
        }
        let r2 = live();
        for (batch, regs) in events.chunks(64).zip(registered.chunks(64)) {
            leases.applied(&reg, batch, regs);
        }
        let r3 = live();
        for v in hub.views() {
            v.healthy_body();
        }
        let r4 = live();
        // The event list's pages were first touched while applying: not the registry's.
        let list = (events.len() * std::mem::size_of::<muster_core::Event>()) as isize;
        let (r, h, l) = (r1 - r0 - list, r2 - r1, r3 - r2);
        let n = N as isize;
        println!("registry {} B/instance", r / n);
        println!("hub      {} B/instance", h / n);
        println!("leases   {} B/instance", l / n);
        println!("total    {} B/instance", (r + h + l) / n);
        println!("one lookup of each service: +{} B/instance", (r4 - r3) / n);
        let one = reg.instances().next().unwrap();
        println!("json: {}", serde_json::to_string(&**one).unwrap());
        println!(
            "size_of Instance {}",
            std::mem::size_of::<muster_core::Instance>()
        );
    });
}
