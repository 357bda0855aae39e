//! Starting the systems under test: a `muster server` or an `etcd`, each on fresh loopback
//! ports and a fresh data directory, with its default durability.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Which system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum System {
    Muster,
    Etcd,
}

impl System {
    pub(crate) fn name(self) -> &'static str {
        match self {
            System::Muster => "muster",
            System::Etcd => "etcd",
        }
    }
}

/// A running server; killed and its directory removed on drop.
pub(crate) struct Server {
    child: tokio::process::Child,
    pid: u32,
    /// Base URL of the client API.
    pub(crate) addr: String,
    dir: tempfile::TempDir,
}

/// `n` distinct ports that were free a moment ago (all held until all are chosen).
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

impl Server {
    /// Starts `system` from `binary`, and waits until it serves.
    pub(crate) async fn start(system: System, binary: &Path) -> anyhow::Result<Server> {
        let mut members = Server::spawn_members(system, binary, 1)?;
        let mut server = members.remove(0);
        server.wait_ready(system).await?;
        Ok(server)
    }

    /// Spawns the `nodes` members of one cluster (one a cluster of itself), each on fresh
    /// loopback ports and a data directory of its own, without waiting for them.
    fn spawn_members(system: System, binary: &Path, nodes: usize) -> anyhow::Result<Vec<Server>> {
        // (client port, peer port) of each member; Muster's peers talk to its HTTP port.
        let free = free_ports(2 * nodes)?;
        let ports: Vec<(u16, u16)> = free.chunks(2).map(|p| (p[0], p[1])).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| match system {
                System::Muster => format!("{}=http://127.0.0.1:{client}", i + 1),
                System::Etcd => format!("bench{}=http://127.0.0.1:{peer}", i + 1),
            })
            .collect();
        let mut members = Vec::with_capacity(nodes);
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = tempfile::Builder::new()
                .prefix(&format!("muster-bench-{}-", system.name()))
                .tempdir()?;
            let data = dir.path().join("data");
            let addr = format!("http://127.0.0.1:{client}");
            let mut cmd = tokio::process::Command::new(binary);
            match system {
                System::Muster => {
                    cmd.arg("server")
                        .arg("--data-dir")
                        .arg(&data)
                        .arg("--http-addr")
                        .arg(format!("127.0.0.1:{client}"))
                        .args(["--log", "warn"]);
                    if nodes > 1 {
                        cmd.args(["--node-id", &(i + 1).to_string()])
                            .args(["--peers", &initial.join(",")]);
                    }
                }
                System::Etcd => {
                    let peer = format!("http://127.0.0.1:{peer}");
                    cmd.args(["--name", &format!("bench{}", i + 1), "--data-dir"])
                        .arg(&data)
                        .args(["--listen-client-urls", &addr])
                        .args(["--advertise-client-urls", &addr])
                        .args(["--listen-peer-urls", &peer])
                        .args(["--initial-advertise-peer-urls", &peer])
                        .args(["--initial-cluster", &initial.join(",")])
                        .args(["--initial-cluster-state", "new"])
                        .args(["--logger", "zap", "--log-level", "warn"]);
                }
            }
            let log = std::fs::File::create(dir.path().join("server.log"))?;
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", binary.display()))?;
            let pid = child.id().context("the server exited at once")?;
            members.push(Server {
                child,
                pid,
                addr,
                dir,
            });
        }
        Ok(members)
    }

    async fn wait_ready(&mut self, system: System) -> anyhow::Result<()> {
        let http = probe_client()?;
        let url = match system {
            System::Muster => format!("{}/readyz", self.addr),
            System::Etcd => format!("{}/health", self.addr),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) while starting; its log:\n{}",
                    system.name(),
                    self.log_tail()
                );
            }
            if let Ok(resp) = http.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} did not become ready within 30 s; its log:\n{}",
            system.name(),
            self.log_tail()
        )
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident memory now, in bytes: all of it (`VmRSS`) and its anonymous part (`RssAnon`:
    /// the heap, without file pages such as etcd's memory-mapped database).
    pub(crate) fn rss(&self) -> anyhow::Result<(u64, u64)> {
        Ok((
            status_kib(self.pid, "VmRSS")? * 1024,
            status_kib(self.pid, "RssAnon")? * 1024,
        ))
    }

    /// CPU time the server has used so far (user and system, every thread, living or not), in
    /// milliseconds.
    pub(crate) fn cpu_ms(&self) -> anyhow::Result<f64> {
        process_cpu_ms(self.pid)
    }

    /// Stops the server and removes its data.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// What a workload runs against: one server, or the members of one cluster. Clients talk to
/// the leader (a single server leads itself).
pub(crate) struct Deployment {
    members: Vec<Server>,
    leader: usize,
}

impl Deployment {
    /// Starts `nodes` members of `system` as one cluster and waits until every one serves and
    /// one of them leads.
    pub(crate) async fn start(
        system: System,
        binary: &Path,
        nodes: usize,
    ) -> anyhow::Result<Deployment> {
        if nodes <= 1 {
            let server = Server::start(system, binary).await?;
            return Ok(Deployment {
                members: vec![server],
                leader: 0,
            });
        }
        // All at once: an etcd member serves only once a quorum of its peers runs.
        let mut members = Server::spawn_members(system, binary, nodes)?;
        for m in &mut members {
            m.wait_ready(system).await?;
        }
        let leader = find_leader(system, &members).await?;
        Ok(Deployment { members, leader })
    }

    /// The client API of the leader.
    pub(crate) fn addr(&self) -> &str {
        &self.members[self.leader].addr
    }

    /// Whether another member leads now than when the deployment started (then the figures
    /// mix in a forwarding hop, or an election).
    pub(crate) async fn leader_moved(&self, system: System) -> anyhow::Result<bool> {
        if self.members.len() > 1 {
            let now = find_leader(system, &self.members).await?;
            if now != self.leader {
                eprintln!(
                    "  leadership moved from member {} to member {} during the run",
                    self.leader + 1,
                    now + 1
                );
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// CPU time every member has used so far, in milliseconds.
    pub(crate) fn cpu_ms(&self) -> anyhow::Result<f64> {
        self.members.iter().map(Server::cpu_ms).sum()
    }

    /// Stops every member and removes their data.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        for m in self.members {
            m.stop().await?;
        }
        Ok(())
    }
}

/// The member that leads, once exactly one says so in its metrics (`muster_raft_leader 1`,
/// `etcd_server_is_leader 1`); within 30 s.
async fn find_leader(system: System, members: &[Server]) -> anyhow::Result<usize> {
    let gauge = match system {
        System::Muster => "muster_raft_leader 1",
        System::Etcd => "etcd_server_is_leader 1",
    };
    let http = probe_client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let mut leading = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let text = match http.get(format!("{}/metrics", m.addr)).send().await {
                Ok(resp) => resp.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.lines().any(|l| l.trim() == gauge) {
                leading.push(i);
            }
        }
        if let [one] = leading[..] {
            return Ok(one);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no single {} member led within 30 s", system.name())
}

/// A client for readiness and metrics probes: a member that hangs fails the probe, not the run.
fn probe_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()?)
}

/// CPU time process `pid` has used so far (user and system, every thread, living or not), in
/// milliseconds.
pub(crate) fn process_cpu_ms(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    cpu_ticks(&stat)
        .map(|ticks| ticks as f64 * 1000.0 / USER_HZ)
        .with_context(|| format!("unreadable /proc/{pid}/stat"))
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, fixed at 100 by the
/// kernel's user-space ABI.
const USER_HZ: f64 = 100.0;

/// `utime + stime` from a `/proc/<pid>/stat` line (fields 14 and 15; the command name in
/// field 2 is parenthesized and may hold spaces, so fields are counted after its `)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `/proc/<pid>/status` figure in KiB.
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} for process {pid}"))
}

/// The file system type of the directory the servers' data directories go in (a tmpfs would
/// make fsync free, and "durable" meaningless).
pub(crate) fn data_fs() -> String {
    let dir = std::env::temp_dir();
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .map_or_else(String::new, |t| format!("{} on {t}", dir.display()))
}

/// `binary --version`, first line.
pub(crate) async fn version(binary: &Path) -> String {
    match tokio::process::Command::new(binary)
        .arg("--version")
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(_) => String::new(),
    }
}

/// The `muster` binary next to this one (cargo builds both into the same directory), unless
/// given.
pub(crate) fn default_muster() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("muster")))
        .unwrap_or_else(|| PathBuf::from("muster"))
}

/// `etcd` on the `PATH`.
pub(crate) fn find_etcd() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
        .context("etcd is not installed: run scripts/install-etcd (apt-get install -y etcd-server)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (muster (x) y) S 1 4242 4242 0 -1 4194560 1083 0 0 0 731 269 0 0 20 0 5 0";
        assert_eq!(super::cpu_ticks(stat), Some(1000));
        assert_eq!(super::cpu_ticks("4242 (muster) S 1"), None);
    }
}
