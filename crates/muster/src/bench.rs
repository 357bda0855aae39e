//! `muster bench`: a load generator for the discovery workloads, against a running server.
//!
//! - `register`: N instances over S services from C concurrent clients; every acknowledged
//!   registration is durable (fsynced) before it is acknowledged.
//! - `lookup`: C clients reading one 100-instance service for a duration.
//! - `watch`: sequential changes to one service with one SSE watcher; latency from sending the
//!   write to the watcher receiving its event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

/// What to run.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Registrations from concurrent clients.
    Register,
    /// Lookups of one 100-instance service.
    Lookup,
    /// Change → watcher latency.
    Watch,
    /// All of the above, in that order.
    All,
}

/// Sizes of the workloads.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Which workload.
    #[command(subcommand)]
    pub(crate) workload: Workload,
    /// Instances to register.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub(crate) instances: u64,
    /// Services they spread over.
    #[arg(long, default_value_t = 100, global = true)]
    pub(crate) services: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64, global = true)]
    pub(crate) concurrency: u64,
    /// Duration of the lookup run, e.g. 10s.
    #[arg(long, default_value = "10s", global = true)]
    pub(crate) duration: String,
    /// Sequential changes in the watch run.
    #[arg(long, default_value_t = 1000, global = true)]
    pub(crate) changes: u64,
}

/// One workload's figures.
#[derive(Debug, Serialize)]
pub(crate) struct Figures {
    workload: &'static str,
    operations: u64,
    errors: u64,
    seconds: f64,
    per_second: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
}

impl Figures {
    fn new(
        workload: &'static str,
        mut latencies_us: Vec<u64>,
        errors: u64,
        elapsed: Duration,
    ) -> Self {
        latencies_us.sort_unstable();
        let pick = |q: f64| {
            if latencies_us.is_empty() {
                0
            } else {
                latencies_us[((latencies_us.len() - 1) as f64 * q).round() as usize]
            }
        };
        let operations = latencies_us.len() as u64;
        Figures {
            workload,
            operations,
            errors,
            seconds: elapsed.as_secs_f64(),
            per_second: operations as f64 / elapsed.as_secs_f64().max(1e-9),
            p50_us: pick(0.5),
            p99_us: pick(0.99),
            max_us: latencies_us.last().copied().unwrap_or(0),
        }
    }

    fn line(&self) -> String {
        format!(
            "{:<9} {:>8} ops {:>6} errors in {:>6.2}s: {:>10.0}/s  p50 {:>7} µs  p99 {:>7} µs  max {:>7} µs",
            self.workload,
            self.operations,
            self.errors,
            self.seconds,
            self.per_second,
            self.p50_us,
            self.p99_us,
            self.max_us
        )
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Prints progress to stderr every second until `done`.
fn progress(label: &'static str, count: Arc<AtomicU64>, total: Option<u64>, done: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let start = Instant::now();
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let n = count.load(Ordering::Relaxed);
            let of = total.map(|t| format!("/{t}")).unwrap_or_default();
            eprintln!(
                "  {label}: {n}{of} after {:.0}s",
                start.elapsed().as_secs_f64()
            );
        }
    });
}

struct Target {
    http: reqwest::Client,
    base: String,
}

impl Target {
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

fn instance(service: &str, id: &str, weight: u64) -> serde_json::Value {
    json!({"service": service, "instanceId": id, "host": "10.1.2.3", "port": 8080, "zone": "bench-a",
           "version": "1.0.0", "weight": weight, "status": "HEALTHY", "leaseTtl": "1h"})
}

pub(crate) async fn run(addr: &str, json_out: bool, args: BenchArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::try_from(args.concurrency).unwrap_or(64) + 4)
        .build()?;
    let t = Arc::new(Target {
        http,
        base: addr.trim_end_matches('/').to_string(),
    });
    t.http
        .get(format!("{}/readyz", t.base))
        .send()
        .await
        .with_context(|| format!("cannot reach muster at {}", t.base))?;
    let mut results = Vec::new();
    let all = args.workload == Workload::All;
    if all || args.workload == Workload::Register {
        results.push(register(&t, &args).await?);
    }
    if all || args.workload == Workload::Lookup {
        results.push(lookup(&t, &args).await?);
    }
    if all || args.workload == Workload::Watch {
        results.push(watch(&t, &args).await?);
    }
    for r in &results {
        if json_out {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!("{}", r.line());
        }
    }
    Ok(())
}

/// Waits for every client task and gathers their latencies and error counts.
async fn join(
    tasks: Vec<tokio::task::JoinHandle<(Vec<u64>, u64)>>,
) -> anyhow::Result<(Vec<u64>, u64)> {
    let (mut lat, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await?;
        lat.extend(l);
        errors += e;
    }
    Ok((lat, errors))
}

async fn register(t: &Arc<Target>, args: &BenchArgs) -> anyhow::Result<Figures> {
    let run = format!("{:x}", std::process::id());
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    progress("register", next.clone(), Some(args.instances), done.clone());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (t, next, run) = (t.clone(), next.clone(), run.clone());
        let (total, services) = (args.instances, args.services.max(1));
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = instance(
                    &format!("bench-svc-{}", i % services),
                    &format!("bench-{run}-{i}"),
                    100,
                );
                let t0 = Instant::now();
                match t.post("/v1/instances", &body).await {
                    Ok(_) => lat.push(micros(t0.elapsed())),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (lat, errors) = join(tasks).await?;
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    Ok(Figures::new("register", lat, errors, elapsed))
}

async fn lookup(t: &Arc<Target>, args: &BenchArgs) -> anyhow::Result<Figures> {
    let service = "bench-lookup";
    for i in 0..100 {
        t.post(
            "/v1/instances",
            &instance(service, &format!("bench-lookup-{i}"), 100),
        )
        .await?;
    }
    let duration = Duration::from_millis(
        muster_core::parse_duration_ms(&args.duration).map_err(anyhow::Error::msg)?,
    );
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    progress("lookup", count.clone(), None, done.clone());
    let url = format!("{}/v1/services/{service}", t.base);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (t, url, count) = (t.clone(), url.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            while start.elapsed() < duration {
                let t0 = Instant::now();
                let ok = match t.http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.map(|b| b.len() > 1000).unwrap_or(false)
                    }
                    _ => false,
                };
                if ok {
                    lat.push(micros(t0.elapsed()));
                    count.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let (lat, errors) = join(tasks).await?;
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    Ok(Figures::new("lookup", lat, errors, elapsed))
}

async fn watch(t: &Arc<Target>, args: &BenchArgs) -> anyhow::Result<Figures> {
    let service = "bench-watch";
    let id = format!("bench-watch-{:x}", std::process::id());
    t.post("/v1/instances", &instance(service, &id, 1)).await?;
    let resp = t
        .http
        .get(format!("{}/v1/watch?service={service}", t.base))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("watch refused: {}", resp.status());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let reader = tokio::spawn(async move {
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(Ok(chunk)) = stream.next().await {
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&frame);
                if !text.starts_with("event: upsert") {
                    continue;
                }
                if let Some(index) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .and_then(|i| i.parse().ok())
                {
                    let _ = tx.send((index, now));
                }
            }
        }
    });
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    progress("watch", count.clone(), Some(args.changes), done.clone());
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    let start = Instant::now();
    for i in 0..args.changes {
        let t0 = Instant::now();
        let index = match t
            .post("/v1/instances", &instance(service, &id, 2 + i % 1000))
            .await
        {
            Ok(v) => v["index"].as_u64().unwrap_or(0),
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some((seen, at))) if seen >= index => {
                    lat.push(micros(at.saturating_duration_since(t0)));
                    break;
                }
                Ok(Some(_)) => continue,
                _ => {
                    errors += 1;
                    break;
                }
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    reader.abort();
    Ok(Figures::new("watch", lat, errors, elapsed))
}
