//! One probe of one check: an HTTP(S) request, a TCP connect, or a `grpc.health.v1` call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use muster_core::health::Probe;
use muster_core::{Check, CheckKind, CheckMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Largest response body read (and dropped) so that a connection can serve the next probe; a
/// longer one is left unread and its connection closed.
const MAX_DRAINED_BODY: usize = 64 * 1024;

/// gRPC channels kept for reuse; past this many, the least recently used is dropped.
const MAX_GRPC_CHANNELS: usize = 4096;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Idle HTTP connections are closed after this long (a target that went away, or whose
/// instance moved to another member, holds no socket for long).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// TCP and HTTP/2 keepalive: a peer that vanished without closing is noticed.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// A gRPC target: `host:port`, TLS, skip verification, connect timeout in ms.
type GrpcKey = (String, bool, bool, u64);

/// gRPC channels kept for reuse.
#[derive(Default)]
struct GrpcChannels {
    /// Channels by target, with when each was last used (a use count).
    by_target: HashMap<GrpcKey, (tonic::transport::Channel, u64)>,
    uses: u64,
}

/// The clients of one node's checks: HTTP connections are pooled per target, gRPC channels
/// kept per target.
pub(super) struct Prober {
    /// Verifies certificates against the system's roots.
    verified: HttpClient,
    /// Accepts any certificate (`tlsSkipVerify`).
    unverified: HttpClient,
    /// TLS for gRPC: verifying, and not.
    grpc_tls: [rustls::ClientConfig; 2],
    grpc: Mutex<GrpcChannels>,
    user_agent: http::HeaderValue,
}

impl Prober {
    /// Clients that identify themselves as node `node_id`. Server certificates are checked
    /// against the system's trust store (e.g. `/etc/ssl/certs`, where an operator adds the CA
    /// of internal services).
    pub(super) fn new(node_id: u64) -> Result<Prober, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the system's CA certificates for HTTPS checks");
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                "no CA certificates found: HTTPS checks verify nothing until some are installed (or use tlsSkipVerify)"
            );
        }
        let config = |verifier: Option<Arc<dyn ServerCertVerifier>>| {
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS for checks: {e}"))?;
            Ok::<_, String>(match verifier {
                Some(v) => builder
                    .dangerous()
                    .with_custom_certificate_verifier(v)
                    .with_no_client_auth(),
                None => builder
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth(),
            })
        };
        let anything = Arc::new(AcceptAnyCertificate(
            provider.signature_verification_algorithms,
        ));
        let client = |tls: rustls::ClientConfig| {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(tcp());
            Client::builder(TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .pool_max_idle_per_host(1)
                .build(connector)
        };
        let user_agent = format!(
            "muster-check/{} (node {node_id})",
            env!("CARGO_PKG_VERSION")
        );
        let (verified, unverified) = (config(None)?, config(Some(anything))?);
        Ok(Prober {
            grpc_tls: [verified.clone(), unverified.clone()],
            grpc: Mutex::default(),
            verified: client(verified),
            unverified: client(unverified),
            user_agent: http::HeaderValue::from_str(&user_agent)
                .map_err(|e| format!("user agent {user_agent:?}: {e}"))?,
        })
    }

    /// Runs one probe of `check` against the instance at `host:port`.
    pub(super) async fn probe(&self, check: &Check, host: &str, port: u16) -> Probe {
        let timeout = Duration::from_millis(check.timeout);
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match check.kind {
            CheckKind::Http => {
                let outcome = tokio::time::timeout(timeout, self.http(check, &bracketed, port));
                match outcome.await {
                    Ok(probe) => probe,
                    Err(_) => Probe::Fail(format!("timed out after {timeout:?}")),
                }
            }
            CheckKind::Tcp => {
                let target = if check.target.is_empty() {
                    format!("{bracketed}:{port}")
                } else {
                    check.target.clone()
                };
                let connect = tokio::net::TcpStream::connect(&target);
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(_)) => Probe::Pass,
                    Ok(Err(e)) => Probe::Fail(format!("connect to {target} failed: {e}")),
                    Err(_) => {
                        Probe::Fail(format!("connect to {target} timed out after {timeout:?}"))
                    }
                }
            }
            CheckKind::Grpc => match self.grpc_channel(&bracketed, port, check) {
                Ok(channel) => grpc(channel, &check.target, &bracketed, port, timeout).await,
                Err(why) => Probe::Fail(why),
            },
            // Never followed by the checker: ttl checks are not probed.
            CheckKind::Ttl => Probe::Fail("ttl checks are not probed".into()),
        }
    }

    /// A request with the check's method and headers that must answer an expected status.
    async fn http(&self, check: &Check, host: &str, port: u16) -> Probe {
        let url = if check.target.starts_with("http://") || check.target.starts_with("https://") {
            check.target.clone()
        } else {
            let scheme = if check.tls { "https" } else { "http" };
            format!("{scheme}://{host}:{port}{}", check.target)
        };
        let method = match check.method {
            CheckMethod::Get => http::Method::GET,
            CheckMethod::Head => http::Method::HEAD,
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(http::header::USER_AGENT, self.user_agent.clone());
        for (name, value) in &check.headers {
            request = request.header(name, value);
        }
        let request = match request.body(Empty::new()) {
            Ok(r) => r,
            Err(e) => return Probe::Fail(format!("cannot build the request to {url}: {e}")),
        };
        let client = if check.tls_skip_verify {
            &self.unverified
        } else {
            &self.verified
        };
        match client.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read a short body to its end so the connection serves the next probe.
                let _ = Limited::new(response.into_body(), MAX_DRAINED_BODY)
                    .collect()
                    .await;
                if check.expected_status.contains(status) {
                    Probe::Pass
                } else {
                    Probe::Fail(format!("HTTP {status}"))
                }
            }
            Err(e) => Probe::Fail(format!("request to {url} failed: {}", chain(&e))),
        }
    }
}

impl Prober {
    /// The channel to a gRPC target, made (lazily connecting, reconnecting by itself) on first
    /// use.
    fn grpc_channel(
        &self,
        host: &str,
        port: u16,
        check: &Check,
    ) -> Result<tonic::transport::Channel, String> {
        let key = (
            format!("{host}:{port}"),
            check.tls,
            check.tls_skip_verify,
            check.timeout,
        );
        let mut guard = self.grpc.lock().unwrap_or_else(|p| p.into_inner());
        let GrpcChannels {
            by_target: channels,
            uses,
        } = &mut *guard;
        *uses += 1;
        if let Some((channel, used)) = channels.get_mut(&key) {
            *used = *uses;
            return Ok(channel.clone());
        }
        if channels.len() >= MAX_GRPC_CHANNELS
            && let Some(oldest) = channels
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            channels.remove(&oldest);
        }
        let scheme = if check.tls { "https" } else { "http" };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", key.0))
            .and_then(|e| e.user_agent(self.user_agent.clone()))
            .map_err(|e| format!("bad gRPC address {}: {e}", key.0))?
            .connect_timeout(Duration::from_millis(check.timeout))
            .tcp_keepalive(Some(KEEPALIVE))
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = if check.tls {
            let tls = self.grpc_tls[usize::from(check.tls_skip_verify)].clone();
            // ALPN h2, as gRPC over TLS requires.
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only()
                .enable_http2()
                .wrap_connector(tcp());
            endpoint.connect_with_connector_lazy(connector)
        } else {
            endpoint.connect_lazy()
        };
        channels.insert(key, (channel.clone(), *uses));
        Ok(channel)
    }
}

/// The TCP side of a connector: any scheme (TLS is layered on top), no Nagle.
fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(KEEPALIVE));
    http
}

/// An error and its sources, `: `-separated (hyper's own message says little: "client error
/// (Connect)").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `tlsSkipVerify`: any certificate chain is accepted; the handshake signatures are still
/// checked (the server holds the key of the certificate it sent).
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A `grpc.health.v1.Health/Check` call for `service` (empty: the server as a whole) on
/// `channel`; only `SERVING` passes.
async fn grpc(
    channel: tonic::transport::Channel,
    service: &str,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Probe {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let call = async {
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable => format!(
                    "gRPC call to {host}:{port} failed: {}",
                    std::error::Error::source(&s).map_or_else(|| s.message().to_string(), chain)
                ),
                code => format!("gRPC health check failed: {code:?}: {}", s.message()),
            })?;
        Ok::<_, String>(response.into_inner().status)
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Probe::Fail(format!("timed out after {timeout:?}")),
        Ok(Err(why)) => Probe::Fail(why),
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => Probe::Pass,
        Ok(Ok(status)) => Probe::Fail(format!(
            "gRPC health: {}",
            ServingStatus::try_from(status).map_or("UNKNOWN", |s| s.as_str_name())
        )),
    }
}
