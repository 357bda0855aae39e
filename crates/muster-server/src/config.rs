//! Server configuration: parsed from a TOML file, flags and `MUSTER_*` variables by the binary,
//! then validated here. Every key, its default and its bounds are listed in docs/operations.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration value out of bounds.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    /// The key, as written in the TOML file.
    pub key: &'static str,
    /// What was wrong and what was expected.
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

/// Every server setting. Keys are snake_case in TOML, `--kebab-case` as flags and
/// `MUSTER_UPPER_CASE` in the environment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Raft node id (≥ 1).
    pub node_id: u64,
    /// Where the log, snapshots and metadata live.
    pub data_dir: PathBuf,
    /// Address the HTTP API listens on.
    pub http_addr: SocketAddr,
    /// Address other nodes and clients are told to use (default: this node's entry in
    /// `peers`, else `http://<http_addr>`).
    pub advertise_addr: Option<String>,
    /// The voters of a new cluster, this node included, as `id=url` (e.g.
    /// `1=http://10.0.0.1:7070`). Used once, to initialize an empty data directory; empty means
    /// a one-node cluster.
    pub peers: Vec<String>,
    /// Join an existing cluster through this member's URL instead of initializing one.
    pub join: Option<String>,
    /// Longest a write may take to commit before it is answered `503 indeterminate`.
    pub write_timeout: String,
    /// Share of leases (0–1) that may go silent at once before their expiry is held.
    pub expiry_protection_threshold: f64,
    /// The registry-wide protection test applies from this many leases.
    pub expiry_protection_min_leases: usize,
    /// Longest mass-expiry protection holds before expiry resumes, e.g. `"5m"`.
    pub expiry_protection_max: String,
    /// Readiness changes within `flap_window` that make an instance flapping.
    pub flap_max_changes: u32,
    /// The flap-counting window, e.g. `"60s"`.
    pub flap_window: String,
    /// How long a flapping instance is held out of rotation, e.g. `"60s"`.
    pub flap_cooldown: String,
    /// Most instances in the registry.
    pub max_instances: u32,
    /// Most instances in one service.
    pub max_instances_per_service: u32,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Events kept per service for watch resumption.
    pub watch_history: usize,
    /// Take a Raft snapshot after this many log entries (or, when more, as many as the registry
    /// held instances at the last snapshot).
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot.
    pub keep_behind_snapshot: u64,
    /// Raft leader heartbeat interval, e.g. `"50ms"`.
    pub raft_heartbeat_interval: String,
    /// Raft election timeout, lower bound.
    pub raft_election_timeout_min: String,
    /// Raft election timeout, upper bound.
    pub raft_election_timeout_max: String,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `muster_server=debug`.
    pub log: String,
    /// `text` or `json`.
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("muster-data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            advertise_addr: None,
            peers: Vec::new(),
            join: None,
            write_timeout: "5s".into(),
            expiry_protection_threshold: 0.3,
            expiry_protection_min_leases: 10,
            expiry_protection_max: "5m".into(),
            flap_max_changes: 4,
            flap_window: "60s".into(),
            flap_cooldown: "60s".into(),
            max_instances: 200_000,
            max_instances_per_service: 10_000,
            max_body_bytes: 256 * 1024,
            watch_history: 1024,
            snapshot_every: 10_000,
            keep_behind_snapshot: 20_000,
            raft_heartbeat_interval: "50ms".into(),
            raft_election_timeout_min: "150ms".into(),
            raft_election_timeout_max: "300ms".into(),
            log: "info,openraft=error".into(),
            log_format: "text".into(),
        }
    }
}

/// A configuration whose every value is within bounds.
#[derive(Clone, Debug)]
pub struct ValidConfig {
    /// The values as given.
    pub config: Config,
    /// Parsed `peers`.
    pub peers: std::collections::BTreeMap<u64, String>,
    /// Parsed `write_timeout`.
    pub write_timeout: Duration,
    /// Parsed `expiry_protection_max`.
    pub expiry_protection_max: Duration,
    /// Parsed flap damping.
    pub flap: muster_core::health::FlapPolicy,
    /// Parsed `raft_heartbeat_interval`.
    pub heartbeat_interval: Duration,
    /// Parsed `raft_election_timeout_min`.
    pub election_timeout_min: Duration,
    /// Parsed `raft_election_timeout_max`.
    pub election_timeout_max: Duration,
}

fn duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let ms = muster_core::parse_duration_ms(text).map_err(|m| err(key, m))?;
    Ok(Duration::from_millis(ms))
}

impl Config {
    /// Checks every value and parses the durations.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.node_id == 0 {
            return Err(err("node_id", "must be at least 1"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "must not be empty"));
        }
        if self.max_instances == 0 || self.max_instances_per_service == 0 {
            return Err(err("max_instances", "instance limits must be at least 1"));
        }
        if self.max_instances_per_service > self.max_instances {
            return Err(err(
                "max_instances_per_service",
                "must not exceed max_instances",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(err(
                "max_body_bytes",
                format!("must be 1 KiB to 64 MiB, got {}", self.max_body_bytes),
            ));
        }
        if !(1..=1_000_000).contains(&self.watch_history) {
            return Err(err(
                "watch_history",
                format!("must be 1 to 1000000, got {}", self.watch_history),
            ));
        }
        if self.snapshot_every < 100 {
            return Err(err(
                "snapshot_every",
                format!("must be at least 100, got {}", self.snapshot_every),
            ));
        }
        if self.keep_behind_snapshot < 1000 {
            return Err(err(
                "keep_behind_snapshot",
                format!(
                    "must be at least 1000 (see openraft issue #2116), got {}",
                    self.keep_behind_snapshot
                ),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(err(
                "log_format",
                format!("must be text or json, got {:?}", self.log_format),
            ));
        }
        let heartbeat_interval =
            duration("raft_heartbeat_interval", &self.raft_heartbeat_interval)?;
        let election_timeout_min =
            duration("raft_election_timeout_min", &self.raft_election_timeout_min)?;
        let election_timeout_max =
            duration("raft_election_timeout_max", &self.raft_election_timeout_max)?;
        if heartbeat_interval.is_zero() || election_timeout_min <= heartbeat_interval {
            return Err(err(
                "raft_election_timeout_min",
                "must be longer than raft_heartbeat_interval, which must be above zero",
            ));
        }
        if election_timeout_max <= election_timeout_min {
            return Err(err(
                "raft_election_timeout_max",
                "must be longer than raft_election_timeout_min",
            ));
        }
        if let Some(a) = &self.advertise_addr
            && !(a.starts_with("http://") || a.starts_with("https://"))
        {
            return Err(err(
                "advertise_addr",
                format!("must be an http(s) URL, got {a:?}"),
            ));
        }
        let is_url = |a: &str| a.starts_with("http://") || a.starts_with("https://");
        let mut peers = std::collections::BTreeMap::new();
        for p in &self.peers {
            let parsed = p
                .split_once('=')
                .and_then(|(id, url)| Some((id.trim().parse::<u64>().ok()?, url.trim())));
            match parsed {
                Some((id, url)) if id > 0 && is_url(url) => {
                    if peers
                        .insert(id, url.trim_end_matches('/').to_string())
                        .is_some()
                    {
                        return Err(err("peers", format!("node {id} is listed twice")));
                    }
                }
                _ => {
                    return Err(err(
                        "peers",
                        format!("each peer must be id=http://host:port, got {p:?}"),
                    ));
                }
            }
        }
        let mut urls: Vec<&String> = peers.values().collect();
        urls.sort();
        if urls.windows(2).any(|w| w[0] == w[1]) {
            return Err(err(
                "peers",
                "two peers share one URL: every node needs its own address",
            ));
        }
        let unspecified = |a: &str| a.contains("://0.0.0.0") || a.contains("://[::]");
        if let Some(u) = peers.values().find(|u| unspecified(u)) {
            return Err(err(
                "peers",
                format!("{u:?} is not an address others can reach"),
            ));
        }
        let clustered = !peers.is_empty() || self.join.is_some();
        if clustered
            && self.advertise_addr.is_none()
            && peers.is_empty()
            && self.http_addr.ip().is_unspecified()
        {
            return Err(err(
                "advertise_addr",
                format!(
                    "joining a cluster while listening on {} needs --advertise-addr: the address others reach this node at",
                    self.http_addr
                ),
            ));
        }
        if let Some(a) = &self.advertise_addr
            && unspecified(a)
        {
            return Err(err(
                "advertise_addr",
                format!("{a:?} is not an address others can reach"),
            ));
        }
        if !peers.is_empty() && !peers.contains_key(&self.node_id) {
            return Err(err(
                "peers",
                format!("peers must include this node ({})", self.node_id),
            ));
        }
        if !peers.is_empty() && self.join.is_some() {
            return Err(err(
                "join",
                "give either peers (to form a cluster) or join (to enter one), not both",
            ));
        }
        if let Some(j) = &self.join
            && !is_url(j)
        {
            return Err(err("join", format!("must be an http(s) URL, got {j:?}")));
        }
        let write_timeout = duration("write_timeout", &self.write_timeout)?;
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&write_timeout) {
            return Err(err("write_timeout", "must be between 100ms and 60s"));
        }
        if !(self.expiry_protection_threshold > 0.0 && self.expiry_protection_threshold <= 1.0) {
            return Err(err(
                "expiry_protection_threshold",
                format!(
                    "must be above 0 and at most 1 (1 turns protection off), got {}",
                    self.expiry_protection_threshold
                ),
            ));
        }
        let expiry_protection_max = duration("expiry_protection_max", &self.expiry_protection_max)?;
        if expiry_protection_max > Duration::from_secs(24 * 3600) {
            return Err(err("expiry_protection_max", "must be at most 24h"));
        }
        if self.flap_max_changes < 2 {
            return Err(err(
                "flap_max_changes",
                format!("must be at least 2, got {}", self.flap_max_changes),
            ));
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let flap = muster_core::health::FlapPolicy {
            max_transitions: self.flap_max_changes,
            window_ms: ms(duration("flap_window", &self.flap_window)?),
            cooldown_ms: ms(duration("flap_cooldown", &self.flap_cooldown)?),
        };
        Ok(ValidConfig {
            config: self,
            peers,
            write_timeout,
            expiry_protection_max,
            flap,
            heartbeat_interval,
            election_timeout_min,
            election_timeout_max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = toml::from_str::<Config>("data_dir = \"x\"\ncolour = \"red\"\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn out_of_bounds_values_name_the_key() {
        let cases = [
            ("node_id = 0", "node_id"),
            ("max_body_bytes = 10", "max_body_bytes"),
            (
                "raft_heartbeat_interval = \"500ms\"",
                "raft_election_timeout_min",
            ),
            (
                "raft_election_timeout_max = \"100ms\"",
                "raft_election_timeout_max",
            ),
            ("log_format = \"xml\"", "log_format"),
            ("keep_behind_snapshot = 10", "keep_behind_snapshot"),
            (
                "raft_heartbeat_interval = \"soon\"",
                "raft_heartbeat_interval",
            ),
            ("peers = [\"1=http://a:1\", \"x\"]", "peers"),
            ("peers = [\"2=http://a:1\"]", "peers"),
            ("peers = [\"1=http://a:1\", \"1=http://b:1\"]", "peers"),
            ("join = \"a:1\"", "join"),
            ("peers = [\"1=http://a:1\"]\njoin = \"http://b:1\"", "join"),
            ("write_timeout = \"1h\"", "write_timeout"),
            (
                "expiry_protection_threshold = 1.5",
                "expiry_protection_threshold",
            ),
            ("expiry_protection_max = \"2d\"", "expiry_protection_max"),
            ("flap_max_changes = 1", "flap_max_changes"),
            ("flap_window = \"soon\"", "flap_window"),
            ("peers = [\"1=http://a:1\", \"2=http://a:1\"]", "peers"),
            ("peers = [\"1=http://0.0.0.0:1\"]", "peers"),
            (
                "http_addr = \"0.0.0.0:7070\"\njoin = \"http://b:1\"",
                "advertise_addr",
            ),
        ];
        for (text, key) in cases {
            let e = toml::from_str::<Config>(text)
                .unwrap()
                .validate()
                .unwrap_err();
            assert_eq!(e.key, key, "{text}");
        }
    }
}
