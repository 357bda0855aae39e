//! `muster server`: layer the configuration (default < file < environment < flag), validate it,
//! set up logging, run until SIGINT or SIGTERM.

use anyhow::{Context, bail};
use clap::CommandFactory;
use muster_server::{Config, Server};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, ServerArgs};

/// Rejects `MUSTER_*` variables that name no setting: a typo must not be silently ignored.
fn check_env() -> anyhow::Result<()> {
    let cmd = Cli::command();
    let mut known: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    if let Some(server) = cmd.find_subcommand("server") {
        known.extend(
            server
                .get_arguments()
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned()),
        );
    }
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("MUSTER_") && !known.iter().any(|k| k == key.as_ref()) {
            bail!(
                "unknown environment variable {key}; known: {}",
                known.join(", ")
            );
        }
    }
    Ok(())
}

/// The file (if any) with the environment and flags on top.
pub(crate) fn layered(args: ServerArgs) -> anyhow::Result<Config> {
    let mut c = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str::<Config>(&text)
                .with_context(|| format!("invalid configuration file {}", path.display()))?
        }
        None => Config::default(),
    };
    macro_rules! layer {
        ($($field:ident),* $(,)?) => { $( if let Some(v) = args.$field { c.$field = v; } )* };
    }
    layer!(
        node_id,
        data_dir,
        http_addr,
        max_instances,
        max_instances_per_service,
        max_body_bytes,
        watch_history,
        snapshot_every,
        keep_behind_snapshot,
        raft_heartbeat_interval,
        raft_election_timeout_min,
        raft_election_timeout_max,
        log,
        log_format,
        peers,
        write_timeout,
        expiry_protection_threshold,
        expiry_protection_min_leases,
        expiry_protection_max,
        flap_max_changes,
        flap_window,
        flap_cooldown,
    );
    if args.advertise_addr.is_some() {
        c.advertise_addr = args.advertise_addr;
    }
    if args.join.is_some() {
        c.join = args.join;
    }
    Ok(c)
}

pub(crate) async fn run(args: ServerArgs) -> anyhow::Result<()> {
    check_env()?;
    let config = layered(args)?.validate()?;
    let filter = EnvFilter::try_new(&config.config.log)
        .with_context(|| format!("invalid log filter {:?}", config.config.log))?;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.config.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let server = Server::start(config).await.map_err(anyhow::Error::msg)?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
