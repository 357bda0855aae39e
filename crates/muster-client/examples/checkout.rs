//! `checkout-api` calling `inventory-api` (DESIGN.md's use case), against a running
//! `muster server`:
//!
//! ```text
//! muster server &                                   # the embedded single-node default
//! cargo run -p muster-client --example checkout     # or: … -- http://host:7070
//! ```
//!
//! It starts four `inventory-api` instances on loopback (two stable ones and a canary in zone
//! ap-south-1a, one stable one in ap-south-1b), registers them with `Registration`, and makes
//! calls from a `checkout-api` in ap-south-1a that opts in to the canary: the calls stay in its
//! zone, the canary takes about 5%, and when the zone's instances are drained the calls move
//! to the other zone. Everything it registered is deregistered at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_client::{
    CallPolicy, Locality, Registration, RegistrationConfig, Resolver, ResolverConfig, ViewConfig,
    http_get,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `(instance id, zone, weight, deployment group)`.
const INSTANCES: [(&str, &str, u32, &str); 4] = [
    ("inventory-api-a-1", "ap-south-1a", 95, ""),
    ("inventory-api-a-2", "ap-south-1a", 95, ""),
    ("inventory-api-a-canary", "ap-south-1a", 10, "canary"),
    ("inventory-api-b-1", "ap-south-1b", 100, ""),
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());

    // The inventory-api instances: each answers every request with its id.
    let mut registrations = Vec::new();
    for (id, zone, weight, group) in INSTANCES {
        let port = serve(id).await?;
        let request = serde_json::from_value(serde_json::json!({
            "service": "inventory-api", "instanceId": id, "host": "127.0.0.1", "port": port,
            "zone": zone, "region": "ap-south-1", "weight": weight,
            "deploymentGroup": (!group.is_empty()).then_some(group),
            "leaseTtl": "10s", "status": "HEALTHY"
        }))?;
        let config = RegistrationConfig {
            drain_grace: Duration::from_millis(500),
            ..RegistrationConfig::new(vec![server.clone()], request)
        };
        registrations.push(Registration::register(config).await.map_err(|e| {
            format!("cannot register with {server} (is `muster server` running?): {e}")
        })?);
    }
    println!("registered {} inventory-api instances", registrations.len());

    // checkout-api in ap-south-1a, opted in to the canary.
    let resolver = Resolver::start(
        "inventory-api",
        ResolverConfig {
            servers: vec![server.clone()],
            view: ViewConfig {
                locality: Locality {
                    zone: "ap-south-1a".into(),
                    region: "ap-south-1".into(),
                    cross_region: false,
                },
                groups: vec!["canary".into()],
                ..ViewConfig::default()
            },
            ..ResolverConfig::default()
        },
    )?;
    if !resolver.ready(Duration::from_secs(5)).await {
        return Err(format!("{server} did not answer the watch").into());
    }
    wait_for(&resolver, INSTANCES.len()).await;

    let http = reqwest::Client::new();
    let policy = CallPolicy::default();
    println!("\n1,000 calls from checkout-api in ap-south-1a:");
    report(&calls(&resolver, &policy, &http, 1_000).await);

    // The a-zone instances are drained (a deploy, say): calls fail over to ap-south-1b.
    for (id, zone, _, _) in INSTANCES {
        if zone == "ap-south-1a" {
            http.put(format!("{server}/v1/instances/{id}/status"))
                .header("content-type", "application/json")
                .body(r#"{"status":"DRAINING","reason":"deploy"}"#)
                .send()
                .await?
                .error_for_status()?;
        }
    }
    wait_for(&resolver, 1).await;
    println!("\nafter draining ap-south-1a, 1,000 more calls:");
    report(&calls(&resolver, &policy, &http, 1_000).await);

    for r in registrations {
        r.shutdown().await?;
    }
    println!("\nderegistered everything; done");
    Ok(())
}

/// A tiny HTTP server on loopback answering every request with `id`; returns its port.
async fn serve(id: &'static str) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{id}",
                        id.len()
                    );
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Waits (at most 5 s) until the view holds `n` endpoints.
async fn wait_for(resolver: &Resolver, n: usize) {
    for _ in 0..100 {
        if resolver.view().len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes `n` calls; counts answers by instance.
async fn calls(
    resolver: &Resolver,
    policy: &CallPolicy,
    http: &reqwest::Client,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let who = match http_get(resolver, policy, http, "/stock/sku-42").await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("error: {e}"),
        };
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

fn report(counts: &BTreeMap<String, usize>) {
    let total: usize = counts.values().sum();
    for (who, n) in counts {
        println!(
            "  {who:<24} {n:>5}  {:>5.1}%",
            100.0 * *n as f64 / total as f64
        );
    }
}
