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
//! This crate is being built in stages: this stage holds selection and per-endpoint
//! resilience ([`View`], [`Breaker`], [`Ejection`], [`RetryBudget`]); the resolver that feeds
//! views from the server comes next.

pub mod breaker;
pub mod outlier;
pub mod retry;
pub mod select;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use outlier::{Ejection, EjectionConfig};
pub use retry::{Backoff, RetryBudget};
pub use select::{Endpoint, Locality, Policy, View, ViewConfig};
