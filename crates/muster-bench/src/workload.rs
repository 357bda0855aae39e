//! The workloads, the same for every system.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::Params;
use crate::driver::{Driver, Renewer, Seen};
use crate::stats::{Detection, Fanout, Latency, Rate, micros};

/// Longest one call to a system may take: a hung server fails the run instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `call`, failed after [`CALL_TIMEOUT`].
async fn within<T>(
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| anyhow::anyhow!("a call to the server took over {CALL_TIMEOUT:?}"))?
}

/// One lookup of each of the `services` services named `{prefix}-{n}` (what [`register`]
/// creates), one after another.
pub(crate) async fn lookup_each<D: Driver>(
    d: &D,
    prefix: &str,
    services: u64,
) -> anyhow::Result<()> {
    for s in 0..services {
        let service = format!("{prefix}-{s}");
        let found = within(d.lookup(&service))
            .await
            .with_context(|| format!("lookup of {service}"))?;
        anyhow::ensure!(found > 0, "lookup of {service} found no instance");
    }
    Ok(())
}

/// Prints `label: n[/total]` to stderr every second until dropped.
pub(crate) struct Progress {
    pub(crate) count: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

impl Progress {
    pub(crate) fn start(label: String, total: Option<u64>) -> Progress {
        let count = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (c, d) = (count.clone(), done.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if d.load(Ordering::Relaxed) {
                    return;
                }
                let of = total.map(|t| format!("/{t}")).unwrap_or_default();
                eprintln!(
                    "    {label}: {}{of} after {:.0} s",
                    c.load(Ordering::Relaxed),
                    start.elapsed().as_secs_f64()
                );
            }
        });
        Progress { count, done }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// What client tasks did: latency samples (µs), operations, errors, and what they produced.
struct Tally<T> {
    latencies: Vec<u64>,
    operations: u64,
    errors: u64,
    out: Vec<T>,
}

impl<T> Tally<T> {
    fn new() -> Self {
        Tally {
            latencies: Vec::new(),
            operations: 0,
            errors: 0,
            out: Vec::new(),
        }
    }

    /// Adds up every client task's tally; `elapsed` since the start gives the rate.
    async fn join(
        tasks: Vec<tokio::task::JoinHandle<Tally<T>>>,
        start: Instant,
    ) -> anyhow::Result<(Rate, Vec<T>)> {
        let mut all = Tally::new();
        for task in tasks {
            let t = task.await?;
            all.latencies.extend(t.latencies);
            all.operations += t.operations;
            all.errors += t.errors;
            all.out.extend(t.out);
        }
        let rate = Rate::new(all.operations, all.errors, start.elapsed(), all.latencies);
        Ok((rate, all.out))
    }
}

/// Registers `count` instances over `services` services named `{prefix}-{i % services}` from
/// `clients` concurrent clients. Returns the figures and the leases.
pub(crate) async fn register<D: Driver>(
    d: &D,
    prefix: &str,
    count: u64,
    services: u64,
    clients: u64,
    ttl: Duration,
) -> anyhow::Result<(Rate, Vec<D::Lease>)> {
    let progress = Progress::start(format!("register {prefix}"), Some(count));
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (d, next, done) = (d.clone(), next.clone(), progress.count.clone());
        let prefix = prefix.to_string();
        let services = services.max(1);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let service = format!("{prefix}-{}", i % services);
                let id = format!("{prefix}-{i}");
                let t0 = Instant::now();
                match within(d.register(&service, &id, 100, ttl)).await {
                    Ok(lease) => {
                        t.latencies.push(micros(t0.elapsed()));
                        t.operations += 1;
                        t.out.push(lease);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => t.errors += 1,
                }
            }
            t
        }));
    }
    Tally::join(tasks, start).await
}

/// Renews `leases` for `duration` from `clients` concurrent clients, each renewing all of them
/// in rounds of up to 1000 (Muster: one batch request; etcd: 1000 keepalives in flight on the
/// client's stream). One latency sample per round.
pub(crate) async fn renew<D: Driver>(
    d: &D,
    leases: &[D::Lease],
    clients: u64,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let progress = Progress::start("renew".into(), None);
    let leases: Arc<[D::Lease]> = leases.into();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let mut renewer = within(d.renewer()).await?;
        let (leases, done) = (leases.clone(), progress.count.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::<()>::new();
            let chunks: Vec<&[D::Lease]> = leases.chunks(1000).collect();
            let mut i = c as usize;
            while start.elapsed() < duration && !chunks.is_empty() {
                let chunk = chunks[i % chunks.len()];
                i += 1;
                let t0 = Instant::now();
                match within(renewer.renew(chunk)).await {
                    Ok(n) => {
                        t.latencies.push(micros(t0.elapsed()));
                        t.operations += n as u64;
                        t.errors += (chunk.len() - n) as u64;
                        done.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => t.errors += chunk.len() as u64,
                }
            }
            t
        }));
    }
    Ok(Tally::join(tasks, start).await?.0)
}

/// `clients` concurrent clients read one service of `size` instances for `duration`.
pub(crate) async fn lookup<D: Driver>(
    d: &D,
    size: u64,
    clients: u64,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let (_, leases) = register(d, "lookup", size, 1, 16, Duration::from_secs(3600)).await?;
    if leases.len() as u64 != size {
        bail!(
            "only {} of {size} lookup instances registered",
            leases.len()
        );
    }
    let progress = Progress::start("lookup".into(), None);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (d, done) = (d.clone(), progress.count.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::<()>::new();
            while start.elapsed() < duration {
                let t0 = Instant::now();
                match within(d.lookup("lookup-0")).await {
                    Ok(n) if n as u64 == size => {
                        t.latencies.push(micros(t0.elapsed()));
                        t.operations += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => t.errors += 1,
                }
            }
            t
        }));
    }
    Ok(Tally::join(tasks, start).await?.0)
}

/// Waits for an event at or after `index` with at least one upsert.
async fn seen_upsert(rx: &mut mpsc::UnboundedReceiver<Seen>, index: u64) -> Option<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seen)) if seen.index >= index && seen.upserts > 0 => return Some(seen.at),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

/// `changes` sequential changes to one instance with one watcher: from sending the write to
/// the watcher receiving its event.
pub(crate) async fn watch<D: Driver>(d: &D, changes: u64) -> anyhow::Result<Latency> {
    let ttl = Duration::from_secs(3600);
    let lease = within(d.register("watch-0", "watch-0", 1, ttl)).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    within(d.watch(&["watch-0".into()], 0, tx)).await?;
    let progress = Progress::start("watch".into(), Some(changes));
    let mut lat = Vec::new();
    for i in 0..changes {
        let t0 = Instant::now();
        let index = within(d.update("watch-0", "watch-0", &lease, 2 + (i % 1000) as u32)).await?;
        let at = seen_upsert(&mut rx, index)
            .await
            .with_context(|| format!("change {i} (index {index}) never reached the watcher"))?;
        lat.push(micros(at.saturating_duration_since(t0)));
        progress.count.fetch_add(1, Ordering::Relaxed);
    }
    Ok(Latency::of(lat))
}

/// `watchers` watchers of one service, each a client with its own connection (as separate
/// processes would be); `changes` sequential changes, each waited for until every watcher had it
/// (or 5 s passed). `server_cpu` reads the server's CPU time so far (ms).
pub(crate) async fn fanout<D: Driver>(
    d: &D,
    watchers: u64,
    changes: u64,
    server_cpu: impl Fn() -> anyhow::Result<f64>,
) -> anyhow::Result<Fanout> {
    let ttl = Duration::from_secs(3600);
    let lease = within(d.register("fanout-0", "fanout-0", 1, ttl)).await?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opening = Progress::start("fan-out watchers".into(), Some(watchers));
    for w in 0..watchers {
        let client = within(d.own_client()).await?;
        within(client.watch(&["fanout-0".into()], w, tx.clone())).await?;
        opening.count.fetch_add(1, Ordering::Relaxed);
    }
    drop((opening, tx));
    let progress = Progress::start("fan-out changes".into(), Some(changes));
    let generator_cpu = || crate::server::process_cpu_ms(std::process::id());
    let cpu = (server_cpu()?, generator_cpu()?);
    let (mut all, mut each, mut missed) = (Vec::new(), Vec::new(), 0);
    for i in 0..changes {
        let t0 = Instant::now();
        let index = within(d.update("fanout-0", "fanout-0", &lease, 2 + (i % 1000) as u32)).await?;
        let mut have = HashSet::new();
        let mut last = t0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while (have.len() as u64) < watchers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(seen)) if seen.index >= index && seen.upserts > 0 => {
                    if have.insert(seen.watcher) {
                        each.push(micros(seen.at.saturating_duration_since(t0)));
                        last = last.max(seen.at);
                    }
                }
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
        if have.len() as u64 == watchers {
            all.push(micros(last.saturating_duration_since(t0)));
        } else {
            missed += 1;
        }
        progress.count.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per_change = |used: f64| used / changes.max(1) as f64;
    let cpu_ms_per_change = (
        per_change(server_cpu()? - cpu.0),
        per_change(generator_cpu()? - cpu.1),
    );
    // Closes the watchers' connections (each ends when the receiver goes).
    drop(rx);
    Ok(Fanout {
        watchers,
        changes,
        missed,
        all: Latency::of(all),
        each: Latency::of(each),
        cpu_ms_per_change,
    })
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// The services of the detection run.
fn dead_services(p: &Params) -> Vec<String> {
    (0..p.dead_services).map(|s| format!("dead-{s}")).collect()
}

/// The killed client, as a process of its own (`muster-bench hold`): registers `p.dead`
/// instances with a `p.ttl_seconds` lease over the detection services, prints `ready`, then
/// renews every third of the TTL and prints `renewed <unix µs sent> <unix µs acknowledged>`
/// after each acknowledged round, until killed.
pub(crate) async fn hold<D: Driver>(d: &D, p: &Params) -> anyhow::Result<()> {
    let ttl = Duration::from_secs(p.ttl_seconds);
    let services = dead_services(p);
    let mut leases = Vec::new();
    for i in 0..p.dead {
        let service = &services[(i % p.dead_services.max(1)) as usize];
        leases.push(within(d.register(service, &format!("held-{i}"), 100, ttl)).await?);
    }
    let registered = unix_us();
    println!("renewed {registered} {registered}");
    println!("ready");
    let mut renewer = within(d.renewer()).await?;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = unix_us();
        let renewed = within(renewer.renew(&leases)).await?;
        if renewed != leases.len() {
            // The harness sees the exit before its kill and fails the run.
            bail!("only {renewed} of {} leases renewed", leases.len());
        }
        println!("renewed {sent} {}", unix_us());
    }
}

/// Detection: other instances of the same services stay (a dead client takes out part of each
/// service, as a dead host would), a watcher watches the services, the holder process is
/// killed with SIGKILL some way into a renewal period, and the watcher counts removals.
pub(crate) async fn detection<D: Driver>(
    d: &D,
    p: &Params,
    holder: tokio::process::Command,
) -> anyhow::Result<Detection> {
    let services = dead_services(p);
    let ttl = Duration::from_secs(p.ttl_seconds);
    // The instances that stay: three times as many as the holder's, on long leases.
    let stay = register(
        d,
        "dead",
        3 * p.dead,
        p.dead_services,
        16,
        Duration::from_secs(3600),
    )
    .await?;
    drop(stay);
    let (tx, mut rx) = mpsc::unbounded_channel();
    within(d.watch(&services, 0, tx)).await?;
    let mut holder = spawn_holder(holder)?;
    let mut lines =
        tokio::io::BufReader::new(holder.stdout.take().context("holder stdout")?).lines();
    // (sent, acknowledged) of the last acknowledged renewal round.
    let mut last_renewal = (0, 0);
    let parse = |t: &str| -> anyhow::Result<(u64, u64)> {
        let (sent, acked) = t.split_once(' ').context("a renewal line has two times")?;
        Ok((sent.parse()?, acked.parse()?))
    };
    loop {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .context("the holder did not get ready within 2 minutes")??
            .context("the holder exited before it was ready")?;
        if let Some(t) = line.strip_prefix("renewed ") {
            last_renewal = parse(t)?;
        } else if line == "ready" {
            break;
        }
    }
    // Let a renewal happen, then kill half a period after one.
    let period = ttl / 3;
    tokio::time::sleep(period + period / 2).await;
    if let Some(status) = holder.try_wait()? {
        bail!("the holder exited before it was killed ({status})");
    }
    let killed_us = unix_us();
    let killed = Instant::now();
    holder.start_kill()?;
    holder.wait().await?;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(t) = line.strip_prefix("renewed ") {
            last_renewal = parse(t)?;
        }
    }
    let progress = Progress::start("detection: instances gone".into(), Some(p.dead));
    let deadline = tokio::time::Instant::now() + ttl * 3 + Duration::from_secs(10);
    let (mut gone, mut first, mut last) = (0u64, None, killed);
    while gone < p.dead {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(seen)) if seen.deletes > 0 => {
                if seen.at < killed {
                    bail!("instances were removed before the holder was killed");
                }
                gone += u64::from(seen.deletes);
                first.get_or_insert(seen.at);
                last = seen.at;
                progress.count.store(gone, Ordering::Relaxed);
            }
            Ok(Some(_)) => continue,
            _ => break,
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let after_kill = ms(last.saturating_duration_since(killed));
    Ok(Detection {
        instances: p.dead,
        ttl_ms: p.ttl_seconds * 1000,
        seen_gone: gone,
        last_gone_after_renewal_ms: after_kill
            + killed_us.saturating_sub(last_renewal.0) as f64 / 1000.0,
        last_gone_after_renewal_ack_ms: after_kill
            + killed_us.saturating_sub(last_renewal.1) as f64 / 1000.0,
        last_gone_after_kill_ms: after_kill,
        first_gone_after_kill_ms: first.map_or(0.0, |f| ms(f.saturating_duration_since(killed))),
    })
}

fn spawn_holder(mut cmd: tokio::process::Command) -> anyhow::Result<tokio::process::Child> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the holder process")
}
