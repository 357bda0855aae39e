//! Muster's server: the registry under Raft, the lease table, the HTTP API, watches and metrics.
//!
//! [`Server::start`] opens the store, recovers the registry through Raft, starts the lease
//! sweeper and serves HTTP; [`Server::shutdown`] stops them in reverse order.

pub mod checker;
pub mod config;
pub mod forward;
pub mod http;
pub mod hub;
pub mod leases;
pub mod metrics;
pub mod raft;
#[cfg(feature = "sim")]
pub mod sim;

use std::net::SocketAddr;
use std::sync::Arc;

use muster_core::{Event, EventKind, Instance, Limits, Registry, Status};
use muster_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Config, ConfigError, ValidConfig};

use crate::hub::Hub;
use crate::leases::Leases;
use crate::metrics::{InstanceLabels, Metrics, StatusChangeLabels};
use crate::raft::{ApplyObserver, RaftNode, RaftSettings};

/// Feeds every applied change to the views, the lease table and the metrics.
pub struct Applier {
    hub: Arc<Hub>,
    leases: Arc<Leases>,
    metrics: Arc<Metrics>,
    checker: Option<Arc<checker::Checker>>,
}

impl Applier {
    /// Feeds `hub`, `leases` and `metrics`.
    pub fn new(hub: Arc<Hub>, leases: Arc<Leases>, metrics: Arc<Metrics>) -> Self {
        Applier {
            hub,
            leases,
            metrics,
            checker: None,
        }
    }

    /// Also feeds `checker`.
    pub fn with_checker(mut self, checker: Arc<checker::Checker>) -> Self {
        self.checker = Some(checker);
        self
    }

    fn count(&self, views: &[Arc<hub::ServiceView>]) {
        for view in views {
            for (status, n) in Status::ALL
                .into_iter()
                .zip(view.statuses)
                .filter(|(s, _)| !s.is_terminal())
            {
                let labels = InstanceLabels {
                    service: view.service.to_string(),
                    status: status.as_str(),
                };
                if n > 0 {
                    self.metrics.instances.get_or_create(&labels).set(n as i64);
                } else {
                    self.metrics.instances.remove(&labels);
                }
            }
        }
    }
}

impl ApplyObserver for Applier {
    fn applied(&self, registry: &Registry, events: &[Event], registered: &[Arc<Instance>]) {
        let changed = self.hub.applied(registry, events);
        self.leases.applied(registry, events, registered);
        if let Some(c) = &self.checker {
            c.applied(registry, events);
        }
        for ev in events {
            let to = ev.instance.status;
            if ev.from != Some(to) {
                let labels = StatusChangeLabels {
                    from: ev.from.map_or("NEW", Status::as_str),
                    to: to.as_str(),
                };
                self.metrics.status_changes.get_or_create(&labels).inc();
            }
        }
        let expired = events
            .iter()
            .filter(|e| e.kind == EventKind::Delete && e.instance.status == Status::Expired)
            .count();
        self.metrics.expirations.inc_by(expired as u64);
        self.count(&changed);
    }

    fn restored(&self, registry: &Registry) {
        self.hub.restored(registry);
        self.leases.restored(registry);
        if let Some(c) = &self.checker {
            c.restored(registry);
        }
        self.metrics.instances.clear();
        self.count(&self.hub.views());
    }
}

/// Asks the cluster at `via` to add this node (as a voter, after catching up) until it is a
/// member or the server stops.
async fn join_cluster(
    raft: Arc<RaftNode>,
    via: String,
    addr: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = raft.node_id();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/cluster/members", via.trim_end_matches('/'));
    let body = serde_json::json!({"id": id, "addr": addr, "voter": true}).to_string();
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        if raft.status().members.iter().any(|m| m.id == id && m.voter) {
            tracing::info!(id, "this node is a voting member");
            return;
        }
        let sent = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .timeout(std::time::Duration::from_secs(90))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => continue,
            Ok(r) => tracing::warn!(status = %r.status(), %url, "join refused; retrying"),
            Err(e) => {
                tracing::warn!(error = %e, %url, "cannot reach the cluster to join; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    raft: Arc<RaftNode>,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<()>,
    sweeper: JoinHandle<()>,
}

impl Server {
    /// Opens the data directory, recovers the registry, and starts serving.
    pub async fn start(config: ValidConfig) -> Result<Server, String> {
        let cfg = &config.config;
        let store = Store::open(&cfg.data_dir).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.http_addr))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let hub = Arc::new(Hub::new(cfg.watch_history));
        let leases = Arc::new(Leases::new(
            muster_core::ProtectionConfig {
                threshold: cfg.expiry_protection_threshold,
                min_leases: cfg.expiry_protection_min_leases,
                min_service: 5,
            },
            config.expiry_protection_max,
        ));
        let metrics = Arc::new(Metrics::new());
        let checker = Arc::new(checker::Checker::new(
            cfg.node_id,
            config.flap,
            metrics.clone(),
        )?);
        let applier = Arc::new(
            Applier::new(hub.clone(), leases.clone(), metrics.clone())
                .with_checker(checker.clone()),
        );
        let settings = RaftSettings {
            node_id: cfg.node_id,
            advertise_addr: cfg
                .advertise_addr
                .clone()
                .or_else(|| config.peers.get(&cfg.node_id).cloned())
                .unwrap_or_else(|| format!("http://{addr}")),
            heartbeat_interval: config.heartbeat_interval,
            election_timeout_min: config.election_timeout_min,
            election_timeout_max: config.election_timeout_max,
            snapshot_every: cfg.snapshot_every,
            keep_behind_snapshot: cfg.keep_behind_snapshot,
            peers: config.peers.clone(),
            joining: cfg.join.is_some(),
            write_timeout: config.write_timeout,
            seed: None,
            transport: raft::Transport::Http,
        };
        let raft = Arc::new(RaftNode::start(&settings, store.clone(), applier).await?);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let sweeper = tokio::spawn(
            leases
                .clone()
                .run_sweeper(raft.clone(), shutdown_rx.clone()),
        );
        tokio::spawn(raft.clone().run_prober(shutdown_rx.clone()));
        tokio::spawn(checker.clone().run(raft.clone(), shutdown_rx.clone()));
        let limits = Limits {
            max_instances_per_service: cfg.max_instances_per_service,
            max_instances: cfg.max_instances,
        };
        let forwarder = forward::HeartbeatForwarder::start(raft.clone(), metrics.clone());
        let state = Arc::new(http::AppState {
            raft: raft.clone(),
            hub,
            leases,
            metrics,
            store,
            limits,
            forwarder,
            checker: checker.clone(),
        });
        if let Some(join) = cfg.join.clone() {
            tokio::spawn(join_cluster(
                raft.clone(),
                join,
                settings.advertise_addr.clone(),
                shutdown_rx.clone(),
            ));
        }
        let app = http::router(state, cfg.max_body_bytes);
        let mut stop = shutdown_rx;
        let http = tokio::spawn(async move {
            // Small frames (SSE events, short answers) must not wait for Nagle's algorithm.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        if config.peers.len() <= 1 && cfg.join.is_none() {
            // Alone, this node leads at once: answer nothing before it does.
            raft.wait_recovered(std::time::Duration::from_secs(60))
                .await?;
        }
        tracing::info!(%addr, data_dir = %cfg.data_dir.display(), node_id = cfg.node_id, "muster server ready");
        Ok(Server {
            addr,
            raft,
            shutdown,
            http,
            sweeper,
        })
    }

    /// The address the HTTP API listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Raft and the registry.
    pub fn raft(&self) -> &Arc<RaftNode> {
        &self.raft
    }

    /// Stops HTTP (open watches end), the sweeper and Raft, and closes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.http.abort();
        let _ = self.http.await;
        let _ = self.sweeper.await;
        self.raft.shutdown().await;
    }
}
