//! The data model of DESIGN.md §3: an instance, its status and check, and the rules every field
//! obeys. A [`RegisterRequest`] is what arrives on the wire; [`RegisterRequest::validate`] turns it
//! into an [`InstanceSpec`] or says exactly which field is wrong and why.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arcstr::ArcStr;
use serde::{Deserialize, Serialize};

use crate::serde_util::{duration_ms, parse_duration_ms, timestamp_ms};

/// Longest service name (a DNS label).
pub const MAX_SERVICE_LEN: usize = 63;
/// Longest instance id.
pub const MAX_INSTANCE_ID_LEN: usize = 128;
/// Longest host (a DNS name).
pub const MAX_HOST_LEN: usize = 253;
/// Longest `version`, `zone`, `region`, `deploymentGroup` or `protocol`.
pub const MAX_LABEL_LEN: usize = 64;
/// Most tags on one instance.
pub const MAX_TAGS: usize = 32;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 64;
/// Most metadata entries on one instance.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Most bytes of metadata (keys plus values) on one instance.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Highest weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Weight when none is given.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Shortest lease.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
/// Longest lease.
pub const MAX_LEASE_TTL_MS: u64 = 3_600_000;
/// Lease when none is given.
pub const DEFAULT_LEASE_TTL_MS: u64 = 30_000;
/// Longest `reason` an operator may give with a status change.
pub const MAX_REASON_LEN: usize = 256;
/// Longest check target (a path, URL, `host:port` or gRPC service name).
pub const MAX_CHECK_TARGET_LEN: usize = 1024;
/// Most headers an HTTP check may send.
pub const MAX_CHECK_HEADERS: usize = 16;
/// Longest header name of an HTTP check.
pub const MAX_CHECK_HEADER_NAME_LEN: usize = 64;
/// Longest header value of an HTTP check.
pub const MAX_CHECK_HEADER_VALUE_LEN: usize = 1024;

/// Where an instance is in its lifecycle (DESIGN.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Registered, readiness not yet confirmed. Not discoverable.
    Starting,
    /// Ready and in rotation. The only discoverable status by default.
    Healthy,
    /// Taken out of rotation on request; still listed with `status=any`.
    Draining,
    /// Readiness failed; out of rotation but the lease is alive.
    Unhealthy,
    /// The lease lapsed. Emitted as an event, then dropped from the state.
    Expired,
    /// Deregistered. Emitted as an event, then dropped from the state.
    Removed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 6] = [
        Status::Starting,
        Status::Healthy,
        Status::Draining,
        Status::Unhealthy,
        Status::Expired,
        Status::Removed,
    ];

    /// The wire spelling, e.g. `"HEALTHY"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "STARTING",
            Status::Healthy => "HEALTHY",
            Status::Draining => "DRAINING",
            Status::Unhealthy => "UNHEALTHY",
            Status::Expired => "EXPIRED",
            Status::Removed => "REMOVED",
        }
    }

    /// Parses a status name, case-insensitively.
    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    /// Whether an instance in this status is gone (and will be dropped from the state).
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Expired | Status::Removed)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of an active check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// An HTTP request; 2xx/3xx is a pass.
    Http,
    /// A TCP connect.
    Tcp,
    /// The standard `grpc.health.v1` protocol.
    Grpc,
    /// No probe: readiness comes with heartbeats only.
    Ttl,
}

impl CheckKind {
    /// Whether the server probes this kind of check (every kind but `ttl`).
    pub fn is_probed(self) -> bool {
        self != CheckKind::Ttl
    }
}

/// The request method of an HTTP check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckMethod {
    /// `GET` (the default).
    #[default]
    Get,
    /// `HEAD`: the status without a body.
    Head,
}

impl CheckMethod {
    fn is_get(&self) -> bool {
        *self == CheckMethod::Get
    }
}

/// The HTTP statuses that pass a check, `lo..=hi` (default 200–399, as Kubernetes probes).
/// On the wire: `"200-299"`, or one status, `"204"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct StatusRange {
    /// Lowest passing status.
    pub lo: u16,
    /// Highest passing status.
    pub hi: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        StatusRange { lo: 200, hi: 399 }
    }
}

impl StatusRange {
    /// Whether `status` passes.
    pub fn contains(self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }

    fn is_default(&self) -> bool {
        *self == StatusRange::default()
    }

    /// Parses `"200-299"` or `"204"`: statuses 100–599, low to high.
    pub fn parse(text: &str) -> Result<StatusRange, String> {
        let bad = || {
            format!(
                "expectedStatus is a status or a range of them (\"200-299\", 100-599), got {text:?}"
            )
        };
        let number = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| (100..=599).contains(n))
                .ok_or_else(bad)
        };
        let (lo, hi) = match text.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => (number(text)?, number(text)?),
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(StatusRange { lo, hi })
    }
}

impl From<StatusRange> for String {
    fn from(r: StatusRange) -> String {
        if r.lo == r.hi {
            r.lo.to_string()
        } else {
            format!("{}-{}", r.lo, r.hi)
        }
    }
}

impl TryFrom<String> for StatusRange {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        StatusRange::parse(&text)
    }
}

/// A validated readiness check attached to an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    /// What kind of probe.
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// HTTP: a path (`/health/ready`) or URL; TCP: `host:port` (default: the instance's);
    /// gRPC: the health service name. Empty for `ttl`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Time between probes.
    #[serde(with = "duration_ms")]
    pub interval: u64,
    /// Time one probe may take.
    #[serde(with = "duration_ms")]
    pub timeout: u64,
    /// Consecutive passes before an instance counts as ready.
    pub success_before_healthy: u32,
    /// Consecutive failures before an instance counts as not ready.
    pub failures_before_unhealthy: u32,
    /// HTTP only: the request method.
    #[serde(default, skip_serializing_if = "CheckMethod::is_get")]
    pub method: CheckMethod,
    /// HTTP only: headers sent with each probe (lower-case names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// HTTP only: the statuses that pass.
    #[serde(default, skip_serializing_if = "StatusRange::is_default")]
    pub expected_status: StatusRange,
    /// HTTP and gRPC: probe over TLS (for HTTP, implied by an `https://` target).
    #[serde(default, skip_serializing_if = "is_no")]
    pub tls: bool,
    /// HTTP and gRPC over TLS: accept any server certificate (self-signed, wrong name, expired).
    #[serde(default, skip_serializing_if = "is_no")]
    pub tls_skip_verify: bool,
}

/// Default interval between probes.
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 10_000;
/// Default probe timeout.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 2_000;
/// Default consecutive passes before healthy.
pub const DEFAULT_SUCCESS_BEFORE_HEALTHY: u32 = 1;
/// Default consecutive failures before unhealthy.
pub const DEFAULT_FAILURES_BEFORE_UNHEALTHY: u32 = 3;

/// A check as it arrives on the wire; every field but `type` is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    /// `http`, `tcp`, `grpc` or `ttl`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// See [`Check::target`].
    pub target: Option<String>,
    /// e.g. `"10s"`.
    pub interval: Option<String>,
    /// e.g. `"2s"`.
    pub timeout: Option<String>,
    /// See [`Check::success_before_healthy`].
    pub success_before_healthy: Option<serde_json::Number>,
    /// See [`Check::failures_before_unhealthy`].
    pub failures_before_unhealthy: Option<serde_json::Number>,
    /// `GET` or `HEAD` (HTTP checks only).
    pub method: Option<String>,
    /// Headers to send (HTTP checks only).
    pub headers: Option<BTreeMap<String, String>>,
    /// Passing statuses, e.g. `"200-299"` (HTTP checks only; default 200-399).
    pub expected_status: Option<String>,
    /// Probe over TLS (HTTP and gRPC checks).
    pub tls: Option<bool>,
    /// Accept any server certificate (checks over TLS only).
    pub tls_skip_verify: Option<bool>,
}

/// A registration as it arrives on the wire (`POST /v1/instances`).
///
/// Numbers are read as JSON numbers of any size so that an out-of-range value (`70000`, `1e20`,
/// `80.5`) is reported as such (422) rather than as a type error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    /// Service name (a DNS label).
    pub service: Option<String>,
    /// Unique instance id.
    pub instance_id: Option<String>,
    /// IP literal or host name.
    pub host: Option<String>,
    /// 1–65535.
    pub port: Option<serde_json::Number>,
    /// Availability zone.
    pub zone: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Version label.
    pub version: Option<String>,
    /// 0–10000; default 100.
    pub weight: Option<serde_json::Number>,
    /// Deployment group, e.g. `canary`.
    pub deployment_group: Option<String>,
    /// Application protocol, e.g. `http`.
    pub protocol: Option<String>,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
    /// Free-form metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Shorthand for an HTTP readiness check on this path.
    pub health_endpoint: Option<String>,
    /// A full check spec.
    pub check: Option<CheckRequest>,
    /// An active liveness check (`http`, `tcp` or `grpc`): when it fails, the instance expires.
    pub liveness_check: Option<CheckRequest>,
    /// Lease length, e.g. `"30s"`.
    pub lease_ttl: Option<String>,
    /// Initial status: `STARTING` (default) or `HEALTHY` (only without a check).
    pub status: Option<String>,
}

/// A field that failed validation, with what was expected and what arrived.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// The wire name of the field, e.g. `port` or `tags[3]`.
    pub field: String,
    /// `missing_field` or `invalid_field`.
    pub code: &'static str,
    /// What was wrong and what was expected.
    pub message: String,
}

impl ValidationError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code: "invalid_field",
            message: message.into(),
        }
    }

    fn missing(field: &str) -> Self {
        Self {
            field: field.into(),
            code: "missing_field",
            message: format!("{field} is required"),
        }
    }
}

/// The validated, caller-controlled part of an instance.
///
/// An instance's own fields are its id, host, port, weight and checks. The rest (service,
/// labels, tags, metadata, lease length) is what the instances of one deployment have in
/// common: a profile behind one pointer, which the registry shares among every instance
/// with the same one (a thousand pods of a deployment in three zones hold three profiles).
///
/// In JSON the spec is flat (`service`, `instanceId`, `host`, `port`, `zone`, ...); an optional
/// field at its empty default (`""`, `[]`, `{}`, no check) is left out, and read back as that
/// default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unique instance id.
    pub instance_id: ArcStr,
    /// IP literal or host name.
    pub host: ArcStr,
    /// TCP port.
    pub port: u16,
    /// Relative weight; 0 = listed but never picked.
    pub weight: u32,
    pub(crate) profile: Arc<Profile>,
    /// Boxed: most instances have none, and every instance is kept in memory.
    pub(crate) checks: Option<Box<Checks>>,
}

/// What the instances of one deployment usually have in common.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Profile {
    pub(crate) service: ArcStr,
    pub(crate) zone: ArcStr,
    pub(crate) region: ArcStr,
    pub(crate) version: ArcStr,
    pub(crate) deployment_group: ArcStr,
    pub(crate) protocol: ArcStr,
    pub(crate) tags: Box<[ArcStr]>,
    pub(crate) metadata: Metadata,
    pub(crate) lease_ttl: u64,
}

/// An instance's checks (at least one of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checks {
    readiness: Option<Check>,
    liveness: Option<Check>,
}

impl InstanceSpec {
    /// Service name.
    pub fn service(&self) -> &ArcStr {
        &self.profile.service
    }

    /// Availability zone ("" when not given).
    pub fn zone(&self) -> &ArcStr {
        &self.profile.zone
    }

    /// Region ("" when not given).
    pub fn region(&self) -> &ArcStr {
        &self.profile.region
    }

    /// Version ("" when not given).
    pub fn version(&self) -> &ArcStr {
        &self.profile.version
    }

    /// Deployment group ("" when not given).
    pub fn deployment_group(&self) -> &ArcStr {
        &self.profile.deployment_group
    }

    /// Application protocol ("" when not given).
    pub fn protocol(&self) -> &ArcStr {
        &self.profile.protocol
    }

    /// Tags.
    pub fn tags(&self) -> &[ArcStr] {
        &self.profile.tags
    }

    /// Metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.profile.metadata
    }

    /// Lease length in milliseconds.
    pub fn lease_ttl(&self) -> u64 {
        self.profile.lease_ttl
    }

    /// Readiness check, if any.
    pub fn check(&self) -> Option<&Check> {
        self.checks.as_ref().and_then(|c| c.readiness.as_ref())
    }

    /// Liveness check, if any (always probed: never `ttl`).
    pub fn liveness_check(&self) -> Option<&Check> {
        self.checks.as_ref().and_then(|c| c.liveness.as_ref())
    }

    fn from_form(f: SpecForm) -> Self {
        let checks = (f.check.is_some() || f.liveness_check.is_some()).then(|| {
            Box::new(Checks {
                readiness: f.check,
                liveness: f.liveness_check,
            })
        });
        InstanceSpec {
            instance_id: f.instance_id,
            host: f.host,
            port: f.port,
            weight: f.weight,
            profile: Arc::new(Profile {
                service: f.service,
                zone: f.zone,
                region: f.region,
                version: f.version,
                deployment_group: f.deployment_group,
                protocol: f.protocol,
                tags: f.tags,
                metadata: f.metadata,
                lease_ttl: f.lease_ttl,
            }),
            checks,
        }
    }
}

/// The JSON form of an [`InstanceSpec`], read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecForm {
    service: ArcStr,
    instance_id: ArcStr,
    host: ArcStr,
    port: u16,
    #[serde(default)]
    zone: ArcStr,
    #[serde(default)]
    region: ArcStr,
    #[serde(default)]
    version: ArcStr,
    weight: u32,
    #[serde(default)]
    deployment_group: ArcStr,
    #[serde(default)]
    protocol: ArcStr,
    #[serde(default)]
    tags: Box<[ArcStr]>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(default)]
    check: Option<Check>,
    #[serde(default)]
    liveness_check: Option<Check>,
    #[serde(with = "duration_ms")]
    lease_ttl: u64,
}

/// The JSON form of an [`InstanceSpec`], written: the same fields in the same order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecRef<'a> {
    service: &'a str,
    instance_id: &'a str,
    host: &'a str,
    port: u16,
    #[serde(skip_serializing_if = "str_is_empty")]
    zone: &'a str,
    #[serde(skip_serializing_if = "str_is_empty")]
    region: &'a str,
    #[serde(skip_serializing_if = "str_is_empty")]
    version: &'a str,
    weight: u32,
    #[serde(skip_serializing_if = "str_is_empty")]
    deployment_group: &'a str,
    #[serde(skip_serializing_if = "str_is_empty")]
    protocol: &'a str,
    #[serde(skip_serializing_if = "slice_is_empty")]
    tags: &'a [ArcStr],
    #[serde(skip_serializing_if = "Metadata::is_empty")]
    metadata: &'a Metadata,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<&'a Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    liveness_check: Option<&'a Check>,
    #[serde(with = "duration_ms")]
    lease_ttl: u64,
}

impl Serialize for InstanceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let p = &*self.profile;
        SpecRef {
            service: &p.service,
            instance_id: &self.instance_id,
            host: &self.host,
            port: self.port,
            zone: &p.zone,
            region: &p.region,
            version: &p.version,
            weight: self.weight,
            deployment_group: &p.deployment_group,
            protocol: &p.protocol,
            tags: &p.tags,
            metadata: &p.metadata,
            check: self.check(),
            liveness_check: self.liveness_check(),
            lease_ttl: p.lease_ttl,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for InstanceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SpecForm::deserialize(deserializer).map(InstanceSpec::from_form)
    }
}

/// An instance's metadata: keys to values, ordered by key, serialized as a JSON object.
///
/// A sorted boxed slice rather than a `BTreeMap`: a map's first node reserves room for eleven
/// entries (about 550 bytes for `String` pairs), instances carry a handful, and every instance
/// is kept in memory (the registry, the Raft log's tail). With one entry this takes 16 bytes;
/// the registry shares the strings among instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Metadata(Box<[(ArcStr, ArcStr)]>);

impl Metadata {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Entries in key order, as stored.
    pub(crate) fn entries(&self) -> &[(ArcStr, ArcStr)] {
        &self.0
    }

    /// From entries already sorted by key, without repeats.
    pub(crate) fn from_sorted(entries: Vec<(ArcStr, ArcStr)>) -> Self {
        debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        Metadata(entries.into_boxed_slice())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        Metadata(
            map.into_iter()
                .map(|(k, v)| (ArcStr::from(k), ArcStr::from(v)))
                .collect(),
        )
    }
}

impl FromIterator<(String, String)> for Metadata {
    /// Sorted by key; of repeated keys the last wins (as in a JSON object read into a map).
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Metadata::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl Serialize for Metadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer).map(Metadata::from)
    }
}

/// A registered instance: its spec plus the server-set lifecycle fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// What the instance registered with.
    #[serde(flatten)]
    pub spec: InstanceSpec,
    /// Where it is in its lifecycle.
    pub status: Status,
    /// Why it is in that status.
    pub status_reason: ArcStr,
    /// Whether readiness was last reported (or checked) as passing.
    pub ready: bool,
    /// False once its liveness check failed (its lease is then given up: it expires unless
    /// mass-expiry protection holds it, or the check passes again first). Shown only when false.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub live: bool,
    /// When it first registered (the leader's wall clock).
    #[serde(with = "timestamp_ms")]
    pub registered_at: u64,
    /// When its status last changed.
    #[serde(with = "timestamp_ms")]
    pub status_changed_at: u64,
    /// Registry index of its first registration.
    pub create_index: u64,
    /// Registry index of its last change.
    pub modify_index: u64,
}

fn str_is_empty(s: &&str) -> bool {
    s.is_empty()
}

fn slice_is_empty<T>(s: &&[T]) -> bool {
    s.is_empty()
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

fn is_no(b: &bool) -> bool {
    !*b
}

impl RegisterRequest {
    /// Checks every field against DESIGN.md §3 and returns the spec, plus whether the caller asked
    /// to start HEALTHY.
    pub fn validate(self) -> Result<(InstanceSpec, bool), ValidationError> {
        let service = self
            .service
            .ok_or_else(|| ValidationError::missing("service"))?;
        validate_service(&service, "service")?;
        let instance_id = self
            .instance_id
            .ok_or_else(|| ValidationError::missing("instanceId"))?;
        validate_instance_id(&instance_id, "instanceId")?;
        let host = self.host.ok_or_else(|| ValidationError::missing("host"))?;
        validate_host(&host)?;
        let port = self.port.ok_or_else(|| ValidationError::missing("port"))?;
        let port = port
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ValidationError::invalid("port", format!("port must be 1-65535, got {port}"))
            })?;
        let zone = label(self.zone, "zone")?;
        let region = label(self.region, "region")?;
        let version = label(self.version, "version")?;
        let deployment_group = label(self.deployment_group, "deploymentGroup")?;
        let protocol = label(self.protocol, "protocol")?;
        let weight = match self.weight {
            None => DEFAULT_WEIGHT,
            Some(w) => w
                .as_u64()
                .and_then(|w| u32::try_from(w).ok())
                .filter(|w| *w <= MAX_WEIGHT)
                .ok_or_else(|| {
                    ValidationError::invalid(
                        "weight",
                        format!("weight must be 0-{MAX_WEIGHT}, got {w}"),
                    )
                })?,
        };
        let tags = self.tags.unwrap_or_default();
        if tags.len() > MAX_TAGS {
            return Err(ValidationError::invalid(
                "tags",
                format!("at most {MAX_TAGS} tags are allowed, got {}", tags.len()),
            ));
        }
        for (i, tag) in tags.iter().enumerate() {
            if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.chars().any(char::is_control) {
                return Err(ValidationError::invalid(
                    format!("tags[{i}]"),
                    format!("a tag must be 1-{MAX_TAG_LEN} printable bytes, got {tag:?}"),
                ));
            }
        }
        let metadata = self.metadata.unwrap_or_default();
        if metadata.len() > MAX_METADATA_ENTRIES {
            return Err(ValidationError::invalid(
                "metadata",
                format!(
                    "at most {MAX_METADATA_ENTRIES} metadata entries are allowed, got {}",
                    metadata.len()
                ),
            ));
        }
        let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_METADATA_BYTES {
            return Err(ValidationError::invalid(
                "metadata",
                format!(
                    "metadata may hold at most {MAX_METADATA_BYTES} bytes of keys and values, got {bytes}"
                ),
            ));
        }
        if let Some(key) = metadata.keys().find(|k| k.is_empty()) {
            return Err(ValidationError::invalid(
                "metadata",
                format!("metadata keys must not be empty, got {key:?}"),
            ));
        }
        let check = match (self.health_endpoint, self.check) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::invalid(
                    "check",
                    "give either healthEndpoint or check, not both",
                ));
            }
            (Some(path), None) => Some(validate_check(
                CheckRequest {
                    kind: Some("http".into()),
                    target: Some(path),
                    ..Default::default()
                },
                "healthEndpoint",
            )?),
            (None, Some(req)) => Some(validate_check(req, "check")?),
            (None, None) => None,
        };
        let liveness_check = match self.liveness_check {
            None => None,
            Some(req) => {
                let check = validate_check(req, "livenessCheck")?;
                if !check.kind.is_probed() {
                    return Err(ValidationError::invalid(
                        "livenessCheck.type",
                        "a liveness check is probed: http, tcp or grpc (the lease is the ttl liveness)",
                    ));
                }
                Some(check)
            }
        };
        let lease_ttl = match self.lease_ttl {
            None => DEFAULT_LEASE_TTL_MS,
            Some(text) => {
                let ms = parse_duration_ms(&text)
                    .map_err(|m| ValidationError::invalid("leaseTtl", m))?;
                if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ms) {
                    return Err(ValidationError::invalid(
                        "leaseTtl",
                        format!("leaseTtl must be between 1s and 1h, got {text:?}"),
                    ));
                }
                ms
            }
        };
        let want_healthy = match self.status.as_deref() {
            None => false,
            Some(s) => match Status::parse(s) {
                Some(Status::Starting) => false,
                Some(Status::Healthy)
                    if check.as_ref().is_none_or(|c| c.kind == CheckKind::Ttl) =>
                {
                    true
                }
                Some(Status::Healthy) => {
                    return Err(ValidationError::invalid(
                        "status",
                        "an instance with an active check starts STARTING and becomes HEALTHY when the check passes",
                    ));
                }
                _ => {
                    return Err(ValidationError::invalid(
                        "status",
                        format!("initial status must be STARTING or HEALTHY, got {s:?}"),
                    ));
                }
            },
        };
        let spec = InstanceSpec::from_form(SpecForm {
            service: service.into(),
            instance_id: instance_id.into(),
            host: host.into(),
            port,
            zone: zone.into(),
            region: region.into(),
            version: version.into(),
            weight,
            deployment_group: deployment_group.into(),
            protocol: protocol.into(),
            tags: tags.into_iter().map(ArcStr::from).collect(),
            metadata: Metadata::from(metadata),
            check,
            liveness_check,
            lease_ttl,
        });
        Ok((spec, want_healthy))
    }
}

fn label(value: Option<String>, field: &str) -> Result<String, ValidationError> {
    let value = value.unwrap_or_default();
    if value.len() > MAX_LABEL_LEN || value.chars().any(char::is_control) {
        return Err(ValidationError::invalid(
            field,
            format!(
                "{field} must be at most {MAX_LABEL_LEN} printable bytes, got {} bytes",
                value.len()
            ),
        ));
    }
    Ok(value)
}

/// Checks a service name against DNS label rules: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
pub fn validate_service(name: &str, field: &str) -> Result<(), ValidationError> {
    let b = name.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !b.is_empty()
        && b.len() <= MAX_SERVICE_LEN
        && ok_char(&b[0])
        && ok_char(&b[b.len() - 1])
        && b.iter().all(|c| ok_char(c) || *c == b'-');
    if valid {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            format!(
                "{field} must be a DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-'), got {name:?}"
            ),
        ))
    }
}

/// Checks an instance id: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn validate_instance_id(id: &str, field: &str) -> Result<(), ValidationError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_INSTANCE_ID_LEN
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            field,
            format!(
                "{field} must be 1-{MAX_INSTANCE_ID_LEN} of A-Z, a-z, 0-9, '.', '_', ':' and '-', got {id:?}"
            ),
        ))
    }
}

fn validate_host(host: &str) -> Result<(), ValidationError> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if !name.is_empty() && host.len() <= MAX_HOST_LEN && name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(ValidationError::invalid(
            "host",
            format!("host must be an IP literal or a DNS host name, got {host:?}"),
        ))
    }
}

fn validate_check(req: CheckRequest, field: &str) -> Result<Check, ValidationError> {
    let f = |sub: &str| {
        if field == "healthEndpoint" {
            field.to_string()
        } else {
            format!("{field}.{sub}")
        }
    };
    let kind = match req.kind.as_deref() {
        None => return Err(ValidationError::missing(&f("type"))),
        Some("http") => CheckKind::Http,
        Some("tcp") => CheckKind::Tcp,
        Some("grpc") => CheckKind::Grpc,
        Some("ttl") => CheckKind::Ttl,
        Some(other) => {
            return Err(ValidationError::invalid(
                f("type"),
                format!("check type must be http, tcp, grpc or ttl, got {other:?}"),
            ));
        }
    };
    let target = req.target.unwrap_or_default();
    if target.len() > MAX_CHECK_TARGET_LEN || target.chars().any(char::is_control) {
        return Err(ValidationError::invalid(
            f("target"),
            format!("check target must be at most {MAX_CHECK_TARGET_LEN} printable bytes"),
        ));
    }
    let https = target.starts_with("https://");
    if kind == CheckKind::Http
        && !(target.starts_with('/') || target.starts_with("http://") || https)
    {
        return Err(ValidationError::invalid(
            f("target"),
            format!(
                "an HTTP check needs a path starting with '/' or an http:// or https:// URL, got {target:?}"
            ),
        ));
    }
    if !matches!(kind, CheckKind::Http | CheckKind::Grpc) {
        for (given, sub) in [
            (req.tls.is_some(), "tls"),
            (req.tls_skip_verify.is_some(), "tlsSkipVerify"),
        ] {
            if given {
                return Err(ValidationError::invalid(
                    f(sub),
                    format!("{sub} applies to HTTP and gRPC checks only"),
                ));
            }
        }
    }
    let tls = match req.tls {
        Some(false) if https => {
            return Err(ValidationError::invalid(
                f("tls"),
                "an https:// target is probed over TLS: drop \"tls\": false",
            ));
        }
        Some(true) if target.starts_with("http://") => {
            return Err(ValidationError::invalid(
                f("tls"),
                "an http:// target is probed in plain text: use an https:// URL",
            ));
        }
        tls => tls.unwrap_or(false) || https,
    };
    let tls_skip_verify = req.tls_skip_verify.unwrap_or(false);
    if tls_skip_verify && !tls {
        return Err(ValidationError::invalid(
            f("tlsSkipVerify"),
            "tlsSkipVerify applies to checks over TLS only",
        ));
    }
    let (method, headers) = http_options(kind, req.method, req.headers, &f)?;
    if kind != CheckKind::Http && req.expected_status.is_some() {
        return Err(ValidationError::invalid(
            f("expectedStatus"),
            "expectedStatus applies to HTTP checks only",
        ));
    }
    let expected_status = match req.expected_status {
        None => StatusRange::default(),
        Some(text) => StatusRange::parse(&text)
            .map_err(|m| ValidationError::invalid(f("expectedStatus"), m))?,
    };
    let duration = |v: Option<String>, sub: &str, default: u64| -> Result<u64, ValidationError> {
        let Some(text) = v else { return Ok(default) };
        let ms = parse_duration_ms(&text).map_err(|m| ValidationError::invalid(f(sub), m))?;
        if !(100..=3_600_000).contains(&ms) {
            return Err(ValidationError::invalid(
                f(sub),
                format!("{sub} must be between 100ms and 1h, got {text:?}"),
            ));
        }
        Ok(ms)
    };
    let interval = duration(req.interval, "interval", DEFAULT_CHECK_INTERVAL_MS)?;
    let timeout = duration(
        req.timeout,
        "timeout",
        DEFAULT_CHECK_TIMEOUT_MS.min(interval),
    )?;
    if timeout > interval {
        return Err(ValidationError::invalid(
            f("timeout"),
            "check timeout must not exceed its interval",
        ));
    }
    let threshold = |v: Option<serde_json::Number>, sub: &str, default: u32| {
        let Some(n) = v else { return Ok(default) };
        n.as_u64()
            .filter(|n| (1..=100).contains(n))
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                ValidationError::invalid(f(sub), format!("{sub} must be 1-100, got {n}"))
            })
    };
    Ok(Check {
        kind,
        target,
        interval,
        timeout,
        success_before_healthy: threshold(
            req.success_before_healthy,
            "successBeforeHealthy",
            DEFAULT_SUCCESS_BEFORE_HEALTHY,
        )?,
        failures_before_unhealthy: threshold(
            req.failures_before_unhealthy,
            "failuresBeforeUnhealthy",
            DEFAULT_FAILURES_BEFORE_UNHEALTHY,
        )?,
        method,
        headers,
        expected_status,
        tls,
        tls_skip_verify,
    })
}

/// Validates an HTTP check's method and headers (refused on other kinds of check).
fn http_options(
    kind: CheckKind,
    method: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    f: &dyn Fn(&str) -> String,
) -> Result<(CheckMethod, BTreeMap<String, String>), ValidationError> {
    if kind != CheckKind::Http {
        for (given, sub) in [(method.is_some(), "method"), (headers.is_some(), "headers")] {
            if given {
                return Err(ValidationError::invalid(
                    f(sub),
                    format!("{sub} applies to HTTP checks only"),
                ));
            }
        }
    }
    let method = match method.as_deref() {
        None | Some("GET") => CheckMethod::Get,
        Some("HEAD") => CheckMethod::Head,
        Some(other) => {
            return Err(ValidationError::invalid(
                f("method"),
                format!("check method must be GET or HEAD, got {other:?}"),
            ));
        }
    };
    let headers = headers.unwrap_or_default();
    if headers.len() > MAX_CHECK_HEADERS {
        return Err(ValidationError::invalid(
            f("headers"),
            format!(
                "at most {MAX_CHECK_HEADERS} check headers, got {}",
                headers.len()
            ),
        ));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        let field = f(&format!("headers.{name}"));
        if name.is_empty() || name.len() > MAX_CHECK_HEADER_NAME_LEN || !name.chars().all(token) {
            return Err(ValidationError::invalid(
                field,
                format!(
                    "a header name must be 1-{MAX_CHECK_HEADER_NAME_LEN} token characters, got {name:?}"
                ),
            ));
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            return Err(ValidationError::invalid(
                field,
                format!("the {lower} header is set by the prober, not by a check"),
            ));
        }
        if value.len() > MAX_CHECK_HEADER_VALUE_LEN
            || !value
                .chars()
                .all(|c| c == ' ' || c == '\t' || c.is_ascii_graphic())
        {
            return Err(ValidationError::invalid(
                field,
                format!(
                    "a header value must be at most {MAX_CHECK_HEADER_VALUE_LEN} bytes of visible ASCII"
                ),
            ));
        }
        if out.insert(lower, value).is_some() {
            return Err(ValidationError::invalid(
                field,
                "header given twice (names are case-insensitive)",
            ));
        }
    }
    Ok((method, out))
}

#[cfg(test)]
mod tests;
