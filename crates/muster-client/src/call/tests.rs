use super::*;
use crate::select::ViewConfig;
use crate::testing::instance;
use crate::{BreakerConfig, EjectionConfig, Endpoint};
use std::sync::Mutex;

fn view(ids: &[&str]) -> Arc<View> {
    let config = ViewConfig {
        policy: crate::Policy::RoundRobin,
        breaker: BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 2.0,
            ..BreakerConfig::default()
        },
        ejection: EjectionConfig {
            consecutive_failures: 0,
            ..EjectionConfig::default()
        },
        ..ViewConfig::default()
    };
    Arc::new(View::new(
        ids.iter()
            .map(|id| Endpoint::new(instance(id, "a1", 100, ""))),
        Arc::new(config),
    ))
}

fn policy() -> CallPolicy {
    CallPolicy {
        backoff: Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        },
        ..CallPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn an_upstream_failure_is_retried_on_another_endpoint() {
    let v = view(&["bad", "good"]);
    let tried = Mutex::new(Vec::new());
    let answer = call(
        &v,
        &policy(),
        None,
        |i| {
            tried.lock().unwrap().push(i.spec.instance_id.to_string());
            async move {
                if &*i.spec.instance_id == "bad" {
                    Err(Failure::upstream("refused"))
                } else {
                    Ok(i.spec.instance_id.to_string())
                }
            }
        },
        |_| None,
    )
    .await;
    assert_eq!(answer.unwrap(), "good");
    let tried = tried.into_inner().unwrap();
    assert!(
        tried.len() <= 3 && tried.last().map(String::as_str) == Some("good"),
        "{tried:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_downstream_failure_is_not_retried() {
    let v = view(&["a", "b"]);
    let mut tries = 0;
    let answer: Result<(), _> = call(
        &v,
        &policy(),
        None,
        |_| {
            tries += 1;
            async { Err(Failure::downstream("400 bad request")) }
        },
        |_| None,
    )
    .await;
    assert_eq!(tries, 1);
    assert!(matches!(
        answer,
        Err(CallError::Failed {
            fault: Fault::Downstream,
            ..
        })
    ));
    assert!(!answer.unwrap_err().is_upstream());
}

#[tokio::test(start_paused = true)]
async fn slow_tries_time_out_and_the_whole_call_is_bounded() {
    let v = view(&["slow"]);
    let p = CallPolicy {
        per_try_timeout: Duration::from_millis(100),
        overall_timeout: Duration::from_millis(250),
        max_attempts: 10,
        ..policy()
    };
    let start = Instant::now();
    let mut tries = 0;
    let answer: Result<(), CallError<&str>> = call(
        &v,
        &p,
        None,
        |_| {
            tries += 1;
            async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok(())
            }
        },
        |_| None,
    )
    .await;
    assert!(matches!(answer, Err(CallError::Timeout)));
    assert!(Instant::now() - start <= Duration::from_millis(250));
    assert!((2..=3).contains(&tries), "{tries}");
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_retries_and_the_fallback_answers() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(ClientMetrics::register(&mut registry));
    let p = CallPolicy {
        budget: Arc::new(RetryBudget::new(0.0, 1)), // one retry, ever
        metrics: Some(metrics.clone()),
        ..policy()
    };
    let v = view(&["a", "b"]);
    let fail = |_| async { Err::<u32, _>(Failure::upstream("down")) };
    // First call: one try, one retry (the only token), then the fallback.
    let got = call(&v, &p, None, fail, |_| Some(7)).await;
    assert_eq!(got.unwrap(), 7);
    // Second call: no token left: one try, then the error.
    let got = call(&v, &p, None, fail, |_| None).await;
    assert!(matches!(
        got,
        Err(CallError::Failed {
            fault: Fault::Upstream,
            ..
        })
    ));
    assert_eq!(metrics.retries.get(), 1);
    assert_eq!(metrics.retries_over_budget.get(), 2);
    assert_eq!(metrics.fallbacks.get(), 1);
}

#[tokio::test]
async fn an_empty_view_is_no_endpoint() {
    let v = view(&[]);
    let got = call(
        &v,
        &policy(),
        None,
        |_| async { Ok::<_, Failure<()>>(()) },
        |_| None,
    )
    .await;
    assert!(matches!(got, Err(CallError::NoEndpoint)));
}

#[tokio::test(start_paused = true)]
async fn the_callers_own_deadline_is_not_held_against_the_endpoint() {
    let config = ViewConfig {
        breaker: BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        },
        ..ViewConfig::default()
    };
    let v = Arc::new(View::new(
        [Endpoint::new(instance("slowish", "a1", 100, ""))],
        Arc::new(config),
    ));
    let p = CallPolicy {
        overall_timeout: Duration::from_millis(150),
        ..policy()
    };
    for _ in 0..4 {
        let got: Result<(), CallError<&str>> = call(
            &v,
            &p,
            None,
            |_| async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(())
            },
            |_| None,
        )
        .await;
        assert!(matches!(got, Err(CallError::Timeout)));
    }
    let e = v.endpoints().next().unwrap();
    assert_eq!(e.breaker_state(), crate::BreakerState::Closed);
    assert_eq!(e.in_flight(), 0);
}
