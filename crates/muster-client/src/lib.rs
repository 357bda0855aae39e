//! Muster's client library: everything a caller needs to pick an endpoint of a service without
//! waiting on the network.
//!
//! ```text
//!  instances (a local view) ──▶ View::new: filter (HEALTHY, deployment groups)
//!                                          ──▶ locality tiers (same zone → same region → anywhere)
//!                                          ──▶ per tier: picker tables (weights, schedule, ring)
//!  pick ──▶ first tier with an available endpoint ──▶ picker ──▶ Endpoint
//!             (available: not ejected, breaker closed or probing; panic mode uses all)
//!  outcome ──▶ Endpoint::report ──▶ breaker, outlier ejection, load (P2C / peak-EWMA)
//! ```
//!
//! A [`Registration`] keeps an instance registered (heartbeats, re-registration, readiness,
//! drain on shutdown). A [`Resolver`] follows one service (snapshot + watch, failover across servers, periodic
//! refresh, last known good in memory and on disk, empty-push protection) and publishes
//! [`View`]s; a view picks. Per-endpoint resilience: [`Breaker`], [`Ejection`]; retries:
//! [`Backoff`], [`RetryBudget`].

//! # Example
//!
//! A view picks without the network (a resolver publishes views; here one is built by hand):
//!
//! ```
//! use std::sync::Arc;
//! use muster_client::{Endpoint, Locality, View, ViewConfig};
//! use muster_core::{Instance, RegisterRequest, Status};
//!
//! let instance = |id: &str, zone: &str| {
//!     let (spec, _) = serde_json::from_value::<RegisterRequest>(serde_json::json!({
//!         "service": "inventory-api", "instanceId": id, "host": "10.0.0.1", "port": 8080,
//!         "zone": zone, "region": "ap-south-1"
//!     }))
//!     .unwrap()
//!     .validate()
//!     .unwrap();
//!     Arc::new(Instance {
//!         spec,
//!         status: Status::Healthy,
//!         status_reason: "".into(),
//!         ready: true,
//!         live: true,
//!         registered_at: 0,
//!         status_changed_at: 0,
//!         create_index: 1,
//!         modify_index: 1,
//!     })
//! };
//! let config = Arc::new(ViewConfig {
//!     locality: Locality {
//!         zone: "ap-south-1a".into(),
//!         region: "ap-south-1".into(),
//!         cross_region: false,
//!     },
//!     ..ViewConfig::default()
//! });
//! let view = View::new(
//!     [instance("a-1", "ap-south-1a"), instance("b-1", "ap-south-1b")].map(Endpoint::new),
//!     config,
//! );
//! let pick = view.pick(None).expect("an endpoint");
//! assert_eq!(&*pick.instance().spec.instance_id, "a-1"); // same zone first
//! pick.report(true);
//! ```

pub mod breaker;
pub mod call;
pub mod integrate;
pub mod metrics;
pub mod outlier;
pub mod register;
pub mod resolve;
pub mod retry;
pub mod select;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use metrics::ClientMetrics;
pub use outlier::{Ejection, EjectionConfig};
pub use register::{Registration, RegistrationConfig, RegistrationError};
pub use resolve::{ResolveError, Resolver, ResolverConfig, ResolverStatus, Source};
pub use retry::{Backoff, RetryBudget};
#[cfg(test)]
mod testing;

pub use call::{CallError, CallPolicy, Failure, Fault, ViewSource, call, http_get};
pub use integrate::{discover, tonic_channel};
pub use select::{BreakerHook, Endpoint, Locality, Pick, Policy, View, ViewConfig};
