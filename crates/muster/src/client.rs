//! Operator commands: one HTTP call each, a table by default, JSON with `--json`. An unreachable
//! server or a refused request is a one-line error and a non-zero exit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use muster_core::Instance;
use muster_proto::{
    ErrorBody, RegisterRequest, RegisterResponse, ServiceInstances, ServicesResponse, StatusRequest,
};
use reqwest::{Method, Response};
use serde_json::Value;

use crate::cli::{ClusterCommand, Command, LsArgs, RegisterArgs};

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn new(addr: &str) -> anyhow::Result<Client> {
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            bail!("--addr must be an http:// URL, got {addr:?}");
        }
        let http = reqwest::Client::builder()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base: addr.trim_end_matches('/').to_string(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach muster at {}: {}", self.base, root_cause(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => {
                let field = e
                    .error
                    .field
                    .map(|f| format!(" (field {f})"))
                    .unwrap_or_default();
                bail!(
                    "{} {}: {}{field}",
                    status.as_u16(),
                    e.error.code,
                    e.error.message
                )
            }
            Err(_) => bail!("{} from {url}", status),
        }
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Value> {
        let bytes = self
            .send(method, path, body)
            .await?
            .bytes()
            .await
            .context("reading the response")?;
        serde_json::from_slice(&bytes).context("the server sent invalid JSON")
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(crate) async fn run(addr: &str, json: bool, cmd: Command) -> anyhow::Result<()> {
    let c = Client::new(addr)?;
    match cmd {
        Command::Server(_) => unreachable!("handled in main"),
        Command::Register(args) => {
            let body = serde_json::to_vec(&register_request(args)?)?;
            let v = c.json(Method::POST, "/v1/instances", Some(body)).await?;
            print_written(json, &v, "registered")
        }
        Command::Deregister { id } => {
            let v = c
                .json(Method::DELETE, &format!("/v1/instances/{}", enc(&id)), None)
                .await?;
            print_written(json, &v, "deregistered")
        }
        Command::Drain { id, reason } => set_status(&c, json, &id, "DRAINING", reason).await,
        Command::Undrain { id, reason } => set_status(&c, json, &id, "HEALTHY", reason).await,
        Command::Heartbeat { id, ready } => {
            let body = serde_json::to_vec(&serde_json::json!({ "ready": ready }))?;
            let v = c
                .json(
                    Method::POST,
                    &format!("/v1/instances/{}/heartbeat", enc(&id)),
                    Some(body),
                )
                .await?;
            if json {
                println!("{v}");
            } else {
                println!(
                    "renewed {id}; lease expires at {}",
                    v["leaseExpiresAt"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Command::Get { id } => {
            let v = c
                .json(Method::GET, &format!("/v1/instances/{}", enc(&id)), None)
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", key_values(&v));
            }
            Ok(())
        }
        Command::Ls(args) => ls(&c, json, args).await,
        Command::Cluster(cmd) => cluster(&c, json, cmd).await,
        Command::Watch { services, index } => watch(&c, json, &services, index).await,
    }
}

fn register_request(a: RegisterArgs) -> anyhow::Result<RegisterRequest> {
    let mut metadata = BTreeMap::new();
    for kv in a.metadata {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--meta takes key=value, got {kv:?}"))?;
        metadata.insert(k.to_string(), v.to_string());
    }
    Ok(RegisterRequest {
        service: Some(a.service),
        instance_id: Some(a.id),
        host: Some(a.host),
        port: Some(a.port.into()),
        zone: a.zone,
        region: a.region,
        version: a.version_label,
        weight: a.weight.map(Into::into),
        deployment_group: a.group,
        protocol: a.protocol,
        tags: (!a.tags.is_empty()).then_some(a.tags),
        metadata: (!metadata.is_empty()).then_some(metadata),
        health_endpoint: a.health_endpoint,
        check: None,
        liveness_check: a.liveness_endpoint.map(|path| muster_core::CheckRequest {
            kind: Some("http".into()),
            target: Some(path),
            ..Default::default()
        }),
        lease_ttl: a.ttl,
        status: a.healthy.then(|| "HEALTHY".to_string()),
    })
}

async fn set_status(
    c: &Client,
    json: bool,
    id: &str,
    status: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&StatusRequest {
        status: Some(status.into()),
        reason,
    })?;
    let v = c
        .json(
            Method::PUT,
            &format!("/v1/instances/{}/status", enc(id)),
            Some(body),
        )
        .await?;
    print_written(json, &v, "updated")
}

fn print_written(json: bool, v: &Value, verb: &str) -> anyhow::Result<()> {
    if json {
        println!("{v}");
        return Ok(());
    }
    let r: RegisterResponse = serde_json::from_value(v.clone()).context("unexpected answer")?;
    let i = &r.instance;
    println!(
        "{verb} {} ({}) at index {}: {} — {}",
        i.spec.instance_id,
        i.spec.service(),
        r.index,
        i.status,
        i.status_reason
    );
    Ok(())
}

fn key_values(v: &Value) -> String {
    let mut out = String::new();
    if let Value::Object(map) = v {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in map {
            let shown = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "{k:<width$}  {shown}");
        }
    }
    out
}

/// Prints rows as aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            let _ = write!(s, "{cell:<w$}  ", w = widths[i]);
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

async fn ls(c: &Client, json: bool, a: LsArgs) -> anyhow::Result<()> {
    let Some(service) = a.service else {
        let v = c.json(Method::GET, "/v1/services", None).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let r: ServicesResponse = serde_json::from_value(v)?;
        let join = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, n)| format!("{}={n}", if k.is_empty() { "-" } else { k }))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rows: Vec<Vec<String>> = r
            .services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.instances.to_string(),
                    join(&s.statuses),
                    join(&s.zones),
                    s.index.to_string(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["SERVICE", "INSTANCES", "STATUSES", "ZONES", "INDEX"],
                &rows
            )
        );
        return Ok(());
    };
    let mut q = Vec::new();
    let mut push = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            q.push(format!("{k}={}", enc(v)));
        }
    };
    push("status", &a.status);
    push("zone", &a.zone);
    push("region", &a.region);
    push("group", &a.group);
    push("version", &a.version_label);
    for t in &a.tags {
        q.push(format!("tag={}", enc(t)));
    }
    let path = format!(
        "/v1/services/{}{}{}",
        enc(&service),
        if q.is_empty() { "" } else { "?" },
        q.join("&")
    );
    let v = c.json(Method::GET, &path, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let r: ServiceInstances = serde_json::from_value(v)?;
    print!("{}", instance_table(&r.instances));
    Ok(())
}

fn instance_table(instances: &[Instance]) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let rows: Vec<Vec<String>> = instances
        .iter()
        .map(|i| {
            vec![
                i.spec.instance_id.to_string(),
                i.status.to_string(),
                format!("{}:{}", i.spec.host, i.spec.port),
                dash(i.spec.zone()),
                dash(i.spec.version()),
                i.spec.weight.to_string(),
                dash(i.spec.deployment_group()),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATUS", "ADDRESS", "ZONE", "VERSION", "WEIGHT", "GROUP",
        ],
        &rows,
    )
}

async fn watch(
    c: &Client,
    json: bool,
    services: &[String],
    index: Option<u64>,
) -> anyhow::Result<()> {
    let mut q: Vec<String> = services
        .iter()
        .map(|s| format!("service={}", enc(s)))
        .collect();
    if let Some(i) = index {
        q.push(format!("index={i}"));
    }
    let resp = c
        .send(Method::GET, &format!("/v1/watch?{}", q.join("&")), None)
        .await?;
    let mut stream = resp.bytes_stream();
    let mut frames = muster_proto::sse::Splitter::default();
    while let Some(chunk) = stream.next().await {
        frames
            .push(&chunk.map_err(|e| anyhow!("watch stream broke: {}", root_cause(&e)))?)
            .map_err(|e| anyhow!(e))?;
        while let Some(frame) = frames.next_frame() {
            if json {
                println!("{}", frame.data);
                continue;
            }
            let v: Value = serde_json::from_str(&frame.data).context("invalid watch event")?;
            println!("{}", describe_event(&v));
        }
    }
    bail!("the server closed the watch stream")
}

fn describe_event(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    match v["type"].as_str() {
        Some("snapshot") => {
            let n = v["instances"].as_array().map_or(0, Vec::len);
            format!(
                "{:>8}  snapshot  {}  {n} instances",
                v["index"].as_u64().unwrap_or(0),
                s("service")
            )
        }
        Some(kind @ ("upsert" | "delete")) => {
            let i = &v["instance"];
            format!(
                "{:>8}  {kind:<8}  {}  {}  {}  {}",
                v["index"].as_u64().unwrap_or(0),
                s("service"),
                i["instanceId"].as_str().unwrap_or(""),
                i["status"].as_str().unwrap_or(""),
                i["statusReason"].as_str().unwrap_or("")
            )
        }
        Some("compacted") => format!(
            "{:>8}  compacted (history starts at {}); snapshots follow",
            v["index"].as_u64().unwrap_or(0),
            v["oldest"]
        ),
        _ => v.to_string(),
    }
}

async fn cluster(c: &Client, json: bool, cmd: ClusterCommand) -> anyhow::Result<()> {
    let v = match cmd {
        ClusterCommand::Status => c.json(Method::GET, "/v1/cluster", None).await?,
        ClusterCommand::Add { id, addr, learner } => {
            let body = serde_json::to_vec(
                &serde_json::json!({"id": id, "addr": addr, "voter": !learner}),
            )?;
            c.json(Method::POST, "/v1/cluster/members", Some(body))
                .await?
        }
        ClusterCommand::Remove { id } => {
            c.json(Method::DELETE, &format!("/v1/cluster/members/{id}"), None)
                .await?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |k: &str| match &v[k] {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    println!(
        "node {} is {} in term {}; leader {} ({}); applied {} of {}; last contact {} ms",
        s("nodeId"),
        s("role"),
        s("term"),
        s("leaderId"),
        s("leaderAddr"),
        s("lastApplied"),
        s("lastLogIndex"),
        s("lastContactMs")
    );
    let rows: Vec<Vec<String>> = v["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| {
                    let id = m["id"].to_string();
                    let leader = if m["id"] == v["leaderId"] {
                        "leader"
                    } else {
                        ""
                    };
                    let kind = if m["voter"].as_bool().unwrap_or(false) {
                        "voter"
                    } else {
                        "learner"
                    };
                    vec![
                        id,
                        m["addr"].as_str().unwrap_or("").to_string(),
                        kind.to_string(),
                        leader.to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    print!("{}", table(&["ID", "ADDRESS", "KIND", ""], &rows));
    Ok(())
}
