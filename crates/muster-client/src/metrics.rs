//! The client's Prometheus metrics, registered on a registry the caller owns and passed in as a
//! struct ([`crate::ViewConfig::metrics`], [`crate::CallPolicy`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// `to` label of a breaker change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    /// `open`, `half_open` or `closed`.
    pub to: &'static str,
}

/// The client's metrics.
#[derive(Clone, Debug, Default)]
pub struct ClientMetrics {
    /// Circuit breaker state changes, by new state.
    pub breaker_transitions: Family<BreakerLabels, Counter>,
    /// Endpoints ejected as outliers.
    pub ejections: Counter,
    /// Picks made in panic mode (availability ignored).
    pub panic_picks: Counter,
    /// Retries sent.
    pub retries: Counter,
    /// Retries not sent because the retry budget was spent.
    pub retries_over_budget: Counter,
    /// Calls answered by the fallback hook.
    pub fallbacks: Counter,
}

impl ClientMetrics {
    /// Metrics registered on `registry` under `muster_client_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ClientMetrics::default();
        let r = registry.sub_registry_with_prefix("muster_client");
        r.register(
            "breaker_transitions",
            "Circuit breaker state changes, by new state",
            m.breaker_transitions.clone(),
        );
        r.register(
            "ejections",
            "Endpoints ejected as outliers",
            m.ejections.clone(),
        );
        r.register(
            "panic_picks",
            "Picks made in panic mode (too few endpoints available: all used)",
            m.panic_picks.clone(),
        );
        r.register("retries", "Retries sent", m.retries.clone());
        r.register(
            "retries_over_budget",
            "Retries not sent because the retry budget was spent",
            m.retries_over_budget.clone(),
        );
        r.register(
            "fallbacks",
            "Calls answered by the fallback hook",
            m.fallbacks.clone(),
        );
        m
    }
}
