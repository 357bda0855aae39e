//! One probe of one check: an HTTP(S) request, a TCP connect, or a `grpc.health.v1` call.

use std::sync::Arc;
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

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The HTTP clients of one node's checks (connections are pooled per target).
pub(super) struct Prober {
    /// Verifies certificates against the system's roots.
    verified: HttpClient,
    /// Accepts any certificate (`tlsSkipVerify`).
    unverified: HttpClient,
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
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Client::builder(TokioExecutor::new()).build(connector)
        };
        let user_agent = format!(
            "muster-check/{} (node {node_id})",
            env!("CARGO_PKG_VERSION")
        );
        Ok(Prober {
            verified: client(config(None)?),
            unverified: client(config(Some(anything))?),
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
            CheckKind::Grpc => grpc(&check.target, &bracketed, port, timeout).await,
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

/// A `grpc.health.v1.Health/Check` call for `service` (empty: the server as a whole) over a
/// fresh plaintext HTTP/2 connection; only `SERVING` passes.
async fn grpc(service: &str, host: &str, port: u16, timeout: Duration) -> Probe {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Probe::Fail(format!("bad gRPC address: {e}")),
    };
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect to {host}:{port} failed: {e}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|s| format!("gRPC health check failed: {:?}: {}", s.code(), s.message()))?;
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
