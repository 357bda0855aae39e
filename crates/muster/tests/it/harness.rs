//! Starts and stops real `muster server` processes and talks to them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_muster");

/// A running server; killed (SIGKILL) on drop if still running.
pub(crate) struct Muster {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) dir: PathBuf,
    pub(crate) http: reqwest::Client,
    extra: Vec<String>,
}

impl Muster {
    /// Starts a server on a free loopback port with its data in `dir`.
    pub(crate) fn start_in(dir: &Path, extra: &[&str]) -> Muster {
        Self::start_with_env(dir, extra, &[])
    }

    /// Starts a server with extra `MUSTER_*` variables set.
    pub(crate) fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Muster {
        Self::start_at(
            dir,
            "127.0.0.1:0",
            extra.iter().map(|s| s.to_string()).collect(),
            env,
        )
    }

    fn start_at(dir: &Path, addr: &str, extra: Vec<String>, env: &[(&str, &str)]) -> Muster {
        Self::launch(Command::new(BIN), dir, addr, extra, env)
    }

    /// Starts a server inside network namespace `ns` (`ip netns exec`, which execs in place:
    /// the child's pid is the server's).
    pub(crate) fn start_in_netns(ns: &str, dir: &Path, addr: &str, extra: &[String]) -> Muster {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, BIN]);
        Self::launch(cmd, dir, addr, extra.to_vec(), &[])
    }

    fn launch(
        mut cmd: Command,
        dir: &Path,
        addr: &str,
        extra: Vec<String>,
        env: &[(&str, &str)],
    ) -> Muster {
        let mut child = cmd
            .args(["server", "--data-dir"])
            .arg(dir)
            .args([
                "--http-addr",
                addr,
                "--log-format",
                "json",
                "--log",
                "muster_server=info,warn",
            ])
            .args(&extra)
            .env_remove("MUSTER_ADDR")
            .env_remove("MUSTER_TEST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn muster server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(t) = &tx
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "muster server ready"
                {
                    let _ = t.send(v["fields"]["addr"].as_str().unwrap_or_default().to_string());
                    tx = None;
                }
                if std::env::var_os("MUSTER_TEST_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server reports ready within 30s");
        Muster {
            child,
            base: format!("http://{addr}"),
            dir: dir.to_path_buf(),
            http: reqwest::Client::new(),
            extra,
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "server exited with {status}");
    }

    /// SIGKILL: no chance to flush anything.
    pub(crate) fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// Starts again on the same data directory and the same port.
    pub(crate) fn restart_after(dir: &Path, addr: &str, extra: &[String]) -> Muster {
        Self::start_at(dir, addr, extra.to_vec(), &[])
    }

    pub(crate) fn addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    pub(crate) fn extra(&self) -> Vec<String> {
        self.extra.clone()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json_body(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// The Prometheus text of `/metrics`.
    pub(crate) async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// Registers `id` in `service` as HEALTHY (no check); returns the write's index.
    pub(crate) async fn register(&self, service: &str, id: &str, extra: Value) -> u64 {
        let mut body = json!({"service": service, "instanceId": id, "host": "10.0.0.1", "port": 8080, "status": "HEALTHY"});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let (status, v) = self.post("/v1/instances", body).await;
        assert!(
            status == 200 || status == 201,
            "register {id}: {status} {v}"
        );
        v["index"].as_u64().expect("index")
    }

    /// Opens a watch stream.
    pub(crate) async fn watch(&self, query: &str) -> Sse {
        let resp = self
            .http
            .get(self.url(&format!("/v1/watch?{query}")))
            .send()
            .await
            .expect("watch");
        assert_eq!(resp.status(), 200);
        Sse {
            stream: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
        }
    }
}

impl Drop for Muster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// reqwest without its `json` feature: a small extension for JSON bodies.
pub(crate) trait JsonBody {
    fn json_body(self, v: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(v).expect("encode"))
    }
}

type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// A Server-Sent Events reader.
pub(crate) struct Sse {
    stream: ByteStream,
    buf: Vec<u8>,
}

/// One SSE event.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) event: String,
    pub(crate) id: Option<u64>,
    pub(crate) data: Value,
}

impl Sse {
    /// The next event (comments skipped), or `None` if none arrives within `within`.
    pub(crate) async fn next_within(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(raw).expect("utf-8 frame");
                let mut frame = Frame {
                    event: String::new(),
                    id: None,
                    data: Value::Null,
                };
                for line in text.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        frame.event = e.to_string();
                    } else if let Some(i) = line.strip_prefix("id: ") {
                        frame.id = i.parse().ok();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        frame.data = serde_json::from_str(d).expect("event data is JSON");
                    }
                }
                if frame.event.is_empty() {
                    continue; // a keepalive comment
                }
                return Some(frame);
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// The next event; fails the test if none arrives within 10 s.
    pub(crate) async fn next(&mut self) -> Frame {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("an event within 10s")
    }
}

/// Free loopback ports, found by binding port 0 (released before use: a tiny race, fine here).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

/// A cluster of real `muster server` processes on loopback, node `i + 1` in `nodes[i]`.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Option<Muster>>,
    pub(crate) ports: Vec<u16>,
    pub(crate) root: tempfile::TempDir,
    pub(crate) peers: String,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` voters that form one cluster.
    pub(crate) fn start(n: usize, extra: &[&str]) -> Cluster {
        let ports = free_ports(n);
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=http://127.0.0.1:{p}", i + 1))
            .collect();
        let mut c = Cluster {
            nodes: Vec::new(),
            ports,
            root: tempfile::tempdir().expect("tempdir"),
            peers: peers.join(","),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            let node = c.spawn(id);
            c.nodes.push(Some(node));
        }
        c
    }

    fn spawn(&self, id: usize) -> Muster {
        let mut extra = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--peers".to_string(),
            self.peers.clone(),
        ];
        extra.extend(self.extra.iter().cloned());
        let dir = self.root.path().join(format!("n{id}"));
        Muster::restart_after(&dir, &format!("127.0.0.1:{}", self.ports[id - 1]), &extra)
    }

    /// Node `id` (1-based); panics if it is down.
    pub(crate) fn node(&self, id: usize) -> &Muster {
        self.nodes[id - 1].as_ref().expect("node is up")
    }

    /// Waits until every running node agrees on one leader; returns its id.
    pub(crate) async fn leader(&self) -> usize {
        for _ in 0..500 {
            let mut seen = Vec::new();
            for n in self.nodes.iter().flatten() {
                let (_, c) = n.get("/v1/cluster").await;
                seen.push(c["leaderId"].as_u64());
            }
            if let Some(Some(l)) = seen.first().copied()
                && seen.iter().all(|s| *s == Some(l))
            {
                return l as usize;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no agreed leader within 10s");
    }

    /// SIGKILLs node `id`.
    pub(crate) fn kill9(&mut self, id: usize) {
        if let Some(n) = self.nodes[id - 1].take() {
            n.kill9();
        }
    }

    /// Restarts node `id` on its data directory and port.
    pub(crate) fn restart(&mut self, id: usize) {
        let node = self.spawn(id);
        self.nodes[id - 1] = Some(node);
    }

    /// Waits until node `id` has applied at least `index`.
    pub(crate) async fn wait_applied(&self, id: usize, index: u64) {
        for _ in 0..1000 {
            let (_, c) = self.node(id).get("/v1/cluster").await;
            if c["lastApplied"].as_u64().unwrap_or(0) >= index {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("node {id} did not apply index {index} within 20s");
    }
}

/// The instance ids of a service listing (`{"instances": [...]}`), in order.
pub(crate) fn instance_ids(v: &Value) -> Vec<String> {
    v["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| i["instanceId"].as_str().expect("id").to_string())
        .collect()
}

/// A minimal HTTP target for active checks: answers every request with 200 while `ready`, 503
/// otherwise; or, when `hang`, accepts and never answers.
pub(crate) struct Target {
    pub(crate) port: u16,
    pub(crate) ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Heads of the requests received (the latest at most 100,000).
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    pub(crate) async fn http(ready: bool, hang: bool) -> Target {
        Target::start(ready, hang, None).await
    }

    /// An HTTPS target with a self-signed certificate (no CA trusts it).
    pub(crate) async fn https(ready: bool) -> Target {
        Target::start(ready, false, Some(self_signed(Vec::new()))).await
    }

    async fn start(ready: bool, hang: bool, tls: Option<tokio_rustls::TlsAcceptor>) -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(ready));
        let state = flag.clone();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen_all = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (state, seen, tls) = (state.clone(), seen_all.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => answer(sock, &state, &seen, hang).await,
                        Some(tls) => {
                            if let Ok(sock) = tls.accept(sock).await {
                                answer(sock, &state, &seen, hang).await;
                            }
                        }
                    }
                });
            }
        });
        Target {
            port,
            ready: flag,
            seen,
            task,
        }
    }

    /// The head of the last request received (HTTP targets).
    pub(crate) fn last_request(&self) -> String {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.last().cloned().unwrap_or_default()
    }

    /// The heads of the requests received since the last call.
    pub(crate) fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TLS acceptor with a fresh self-signed certificate for `localhost`, offering `alpn`.
fn self_signed(alpn: Vec<Vec<u8>>) -> tokio_rustls::TlsAcceptor {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let key =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .expect("server config");
    config.alpn_protocols = alpn;
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// A TLS connection tonic's server can serve (it needs [`Connected`]).
///
/// [`Connected`]: tonic::transport::server::Connected
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Reads one request head, records it, and answers 200 while `ready` (503 otherwise), or never
/// when `hang`.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut sock: S,
    ready: &std::sync::atomic::AtomicBool,
    seen: &std::sync::Mutex<Vec<String>>,
    hang: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 2048];
    let n = sock.read(&mut buf).await.unwrap_or(0);
    {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= 100_000 {
            seen.remove(0);
        }
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return;
    }
    let status = if ready.load(std::sync::atomic::Ordering::SeqCst) {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.shutdown().await;
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gRPC server that speaks `grpc.health.v1`, with one named service whose status the test sets.
pub(crate) struct GrpcTarget {
    pub(crate) port: u16,
    /// TLS connections accepted (TLS targets only).
    pub(crate) connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reporter: tonic_health::server::HealthReporter,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcTarget {
    pub(crate) async fn start() -> GrpcTarget {
        GrpcTarget::serve(false).await
    }

    /// Over TLS, with a self-signed certificate.
    pub(crate) async fn start_tls() -> GrpcTarget {
        GrpcTarget::serve(true).await
    }

    async fn serve(tls: bool) -> GrpcTarget {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (reporter, service) = tonic_health::server::health_reporter();
        let server = tonic::transport::Server::builder().add_service(service);
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let task = if tls {
            let acceptor = self_signed(vec![b"h2".to_vec()]);
            let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsConn>>(16);
            let accept = tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    let (acceptor, tx, counted) = (acceptor.clone(), tx.clone(), counted.clone());
                    tokio::spawn(async move {
                        if let Ok(conn) = acceptor.accept(sock).await {
                            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let _ = tx.send(Ok(TlsConn(conn))).await;
                        }
                    });
                }
            });
            let incoming = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            tokio::spawn(async move {
                let _ = server.serve_with_incoming(incoming).await;
                accept.abort();
            })
        } else {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            tokio::spawn(async move {
                let _ = server.serve_with_incoming(incoming).await;
            })
        };
        GrpcTarget {
            port,
            connections,
            reporter,
            task,
        }
    }

    /// Sets the status of `service`.
    pub(crate) async fn set(&self, service: &str, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter.set_service_status(service, status).await;
    }
}

impl Drop for GrpcTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}
