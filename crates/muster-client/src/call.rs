//! One call through the whole pipeline: pick → call → report, with per-try and overall
//! timeouts, retries (jittered backoff, within a retry budget) preferring endpoints that have
//! not failed this call, and a fallback when nothing worked.
//!
//! A failure says whose fault it was: [`Fault::Upstream`] (the endpoint: counted against it by
//! its breaker and ejection, and retried elsewhere when retryable) or [`Fault::Downstream`]
//! (the request: the endpoint did its job, nothing is retried).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arcstr::ArcStr;
use muster_core::Instance;
use tokio::time::Instant;

use crate::metrics::ClientMetrics;
use crate::resolve::Resolver;
use crate::retry::{Backoff, RetryBudget};
use crate::select::View;

/// Where calls get their view from: a [`Resolver`], or a fixed view.
pub trait ViewSource {
    /// The view to pick from now.
    fn current(&self) -> Arc<View>;
}

impl ViewSource for Resolver {
    fn current(&self) -> Arc<View> {
        self.view()
    }
}

impl ViewSource for Arc<View> {
    fn current(&self) -> Arc<View> {
        self.clone()
    }
}

/// How calls are made.
#[derive(Clone, Debug)]
pub struct CallPolicy {
    /// Tries in all, the first included.
    pub max_attempts: u32,
    /// Longest one try may take (zero: no limit but the overall one).
    pub per_try_timeout: Duration,
    /// Longest the whole call may take, retries and waits included.
    pub overall_timeout: Duration,
    /// Waits between tries.
    pub backoff: Backoff,
    /// Retries allowed, shared by the calls made with this policy.
    pub budget: Arc<RetryBudget>,
    /// Where retries and fallbacks are counted.
    pub metrics: Option<Arc<ClientMetrics>>,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            max_attempts: 3,
            per_try_timeout: Duration::from_secs(1),
            overall_timeout: Duration::from_secs(5),
            backoff: Backoff::default(),
            budget: Arc::new(RetryBudget::new(0.2, 10)),
            metrics: None,
        }
    }
}

/// Whose fault a failed try was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The endpoint's (refused, broke, answered 5xx): counted against it.
    Upstream,
    /// The request's (answered 4xx): the endpoint did its job.
    Downstream,
}

/// A failed try.
#[derive(Debug)]
pub struct Failure<E> {
    /// What went wrong.
    pub error: E,
    /// Whose fault it was.
    pub fault: Fault,
    /// Whether another try (on another pick) may succeed.
    pub retryable: bool,
}

impl<E> Failure<E> {
    /// The endpoint failed; try another.
    pub fn upstream(error: E) -> Self {
        Failure {
            error,
            fault: Fault::Upstream,
            retryable: true,
        }
    }

    /// The request was at fault; no retry.
    pub fn downstream(error: E) -> Self {
        Failure {
            error,
            fault: Fault::Downstream,
            retryable: false,
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError<E> {
    /// The view has no endpoint.
    #[error("no endpoint to call")]
    NoEndpoint,
    /// The last try (or the whole call) ran out of time.
    #[error("timed out")]
    Timeout,
    /// The last try failed.
    #[error("the call failed ({fault:?}): {error}")]
    Failed {
        /// What went wrong.
        error: E,
        /// Whose fault it was.
        fault: Fault,
    },
}

impl<E> CallError<E> {
    /// Whether the failure was the endpoints' (or nobody answered), rather than the request's.
    pub fn is_upstream(&self) -> bool {
        !matches!(
            self,
            CallError::Failed {
                fault: Fault::Downstream,
                ..
            }
        )
    }
}

/// Calls `f` on picked endpoints until it succeeds, fails for good, or the policy says stop.
/// When the endpoints failed it (upstream failures, timeouts, no endpoint), `fallback` may
/// still answer (e.g. from a cache); a downstream failure (the request's fault) is returned
/// as it is.
pub async fn call<S, T, E, F, Fut>(
    source: &S,
    policy: &CallPolicy,
    key: Option<&[u8]>,
    mut f: F,
    fallback: impl FnOnce(&CallError<E>) -> Option<T>,
) -> Result<T, CallError<E>>
where
    S: ViewSource + ?Sized,
    F: FnMut(Arc<Instance>) -> Fut,
    Fut: Future<Output = Result<T, Failure<E>>>,
{
    let deadline = Instant::now() + policy.overall_timeout;
    policy.budget.deposit();
    let mut last = CallError::NoEndpoint;
    // Endpoints that failed this call (by id): a retry prefers another.
    let mut failed: Vec<ArcStr> = Vec::new();
    for attempt in 1..=policy.max_attempts.max(1) {
        if attempt > 1 {
            let wait = policy.backoff.delay(attempt - 1);
            if Instant::now() + wait >= deadline {
                break;
            }
            if !policy.budget.try_withdraw() {
                if let Some(m) = &policy.metrics {
                    m.retries_over_budget.inc();
                }
                break;
            }
            if let Some(m) = &policy.metrics {
                m.retries.inc();
            }
            tokio::time::sleep(wait).await;
        }
        let view = source.current();
        let Some(mut pick) = view.pick(key) else {
            if attempt == 1 {
                last = CallError::NoEndpoint;
            }
            break;
        };
        for _ in 0..4 {
            let id = &pick.instance().spec.instance_id;
            if !failed.iter().any(|f| f == id) {
                break;
            }
            match view.pick(key) {
                Some(other) => pick = other, // the previous pick is dropped: cancelled
                None => break,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let per_try = if policy.per_try_timeout.is_zero() {
            left
        } else {
            policy.per_try_timeout.min(left)
        };
        // Cut short by the overall deadline rather than its own: a timeout is then not the
        // endpoint's fault.
        let cut_short = policy.per_try_timeout.is_zero() || per_try < policy.per_try_timeout;
        let instance = pick.endpoint().instance().clone();
        match tokio::time::timeout(per_try, f(instance)).await {
            Ok(Ok(value)) => {
                pick.report(true);
                return Ok(value);
            }
            Ok(Err(failure)) => {
                if failure.fault == Fault::Upstream {
                    failed.push(pick.instance().spec.instance_id.clone());
                }
                pick.report(failure.fault == Fault::Downstream);
                let retryable = failure.retryable;
                last = CallError::Failed {
                    error: failure.error,
                    fault: failure.fault,
                };
                if !retryable {
                    return Err(last);
                }
            }
            Err(_) if cut_short => {
                drop(pick); // cancelled: the caller ran out of time, not the endpoint
                last = CallError::Timeout;
            }
            Err(_) => {
                failed.push(pick.instance().spec.instance_id.clone());
                pick.report(false);
                last = CallError::Timeout;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    match fallback(&last) {
        Some(value) => {
            if let Some(m) = &policy.metrics {
                m.fallbacks.inc();
            }
            Ok(value)
        }
        None => Err(last),
    }
}

/// An idempotent HTTP `GET` of `path` on a picked endpoint (`http://host:port/path`), through
/// [`call`]: connection errors, timeouts and 5xx answers are the endpoint's fault and retried
/// elsewhere; 4xx answers are returned as they are (the request's fault, not retried).
pub async fn http_get<S: ViewSource + ?Sized>(
    source: &S,
    policy: &CallPolicy,
    client: &reqwest::Client,
    path: &str,
) -> Result<reqwest::Response, CallError<String>> {
    call(
        source,
        policy,
        None,
        |instance| {
            let host = &instance.spec.host;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.to_string()
            };
            let url = format!("http://{host}:{}{path}", instance.spec.port);
            let request = client.get(url.clone());
            async move {
                match request.send().await {
                    Ok(r) if r.status().is_server_error() => {
                        Err(Failure::upstream(format!("{url}: HTTP {}", r.status())))
                    }
                    Ok(r) => Ok(r),
                    Err(e) => Err(Failure::upstream(format!("{url}: {e}"))),
                }
            }
        },
        |_| None,
    )
    .await
}

#[cfg(test)]
mod tests;
