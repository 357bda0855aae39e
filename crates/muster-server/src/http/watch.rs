//! `GET /v1/watch`: Server-Sent Events for one or more services.
//!
//! A stream starts with a `snapshot` event per service (or, when resuming with `index`, the
//! events after that index), then sends one `upsert` or `delete` event per change, each with its
//! index as the SSE `id`. When the asked index is older than the retained history, a `compacted`
//! event comes first, then fresh snapshots. Frames are encoded once per change and shared by
//! every watcher.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use muster_proto::{MAX_WATCH_SERVICES, WatchEvent};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use super::{AppRef, AppState, extract};
use crate::hub::{Cursor, sse_frame};

/// Comment sent when nothing else was for this long, so proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One watch: its cursors and the frames ready to send.
pub(super) struct Watcher {
    app: Arc<AppState>,
    cursors: Vec<Cursor>,
    pending: VecDeque<Bytes>,
    keepalive: Keepalive,
}

/// When a watch is owed a keepalive: [`KEEPALIVE`] after the last frame sent. One timer per
/// watch, moved only when it fires, not on every frame (a change to a service with 1,000
/// watchers would otherwise take 1,000 timers out of the timer wheel and put 1,000 back).
struct Keepalive {
    timer: Pin<Box<Sleep>>,
    last_sent: Instant,
}

impl Keepalive {
    fn new() -> Self {
        let now = Instant::now();
        Keepalive {
            timer: Box::pin(tokio::time::sleep_until(now + KEEPALIVE)),
            last_sent: now,
        }
    }

    /// A frame went out.
    fn sent(&mut self) {
        self.last_sent = Instant::now();
    }

    /// Resolves once nothing was sent for [`KEEPALIVE`]. Cancel-safe.
    async fn due(&mut self) {
        loop {
            (&mut self.timer).await;
            let now = Instant::now();
            let due = self.last_sent + KEEPALIVE;
            if now >= due {
                self.timer.as_mut().reset(now + KEEPALIVE);
                return;
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// Resolves when any cursor's service changed (an error once the hub is gone).
async fn any_changed(cursors: &mut [Cursor]) -> Result<(), watch::error::RecvError> {
    if let [one] = cursors {
        return one.rx.changed().await;
    }
    let waits = cursors.iter_mut().map(|c| Box::pin(c.rx.changed()));
    futures_util::future::select_all(waits).await.0
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.app.metrics.watch_subscribers.dec();
    }
}

impl Watcher {
    /// The next SSE frame (`: keepalive` after 15 s of nothing); `None` when the hub closed.
    pub(super) async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.keepalive.sent();
                return Some(frame);
            }
            let woke = tokio::select! {
                changed = any_changed(&mut self.cursors) => Some(changed),
                () = self.keepalive.due() => None,
            };
            match woke {
                None => {
                    self.keepalive.sent();
                    return Some(Bytes::from_static(b": keepalive\n\n"));
                }
                Some(Err(_)) => return None,
                Some(Ok(())) => {
                    for c in &mut self.cursors {
                        c.rx.borrow_and_update();
                    }
                    self.app.hub.catch_up(&mut self.cursors, &mut self.pending);
                }
            }
        }
    }
}

pub(super) async fn watch(
    State(app): AppRef,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = extract::query(raw.as_deref(), &["service", "index"])?;
    let mut services: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "service")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut index = extract::u64_param(&pairs, "index")?;
    if index.is_none()
        && let Some(last) = headers.get("last-event-id")
    {
        let text = last.to_str().unwrap_or("");
        index = Some(text.parse().map_err(|_| {
            ApiError::bad_param(
                "Last-Event-ID",
                format!("Last-Event-ID must be an index, got {text:?}"),
            )
        })?);
    }
    let w = open(&app, &mut services, index)?;
    let body = Body::from_stream(stream::unfold(w, |mut w| async move {
        w.next_frame()
            .await
            .map(|f| (Ok::<_, std::convert::Infallible>(f), w))
    }));
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Opens a watch of `services` (1–64 valid names; sorted and deduplicated here), from `index`
/// or with snapshots (the HTTP and gRPC APIs).
pub(super) fn open(
    app: &Arc<AppState>,
    services: &mut Vec<&str>,
    index: Option<u64>,
) -> Result<Watcher, ApiError> {
    services.sort_unstable();
    services.dedup();
    if services.is_empty() {
        return Err(ApiError::bad_param(
            "service",
            "give at least one service=<name>",
        ));
    }
    if services.len() > MAX_WATCH_SERVICES {
        return Err(ApiError::bad_param(
            "service",
            format!(
                "at most {MAX_WATCH_SERVICES} services per watch, got {}",
                services.len()
            ),
        ));
    }
    for s in services.iter() {
        muster_core::model::validate_service(s, "service")
            .map_err(|e| ApiError::bad_param("service", e.message))?;
    }
    // An index from beyond this registry's history (a wiped or restored data directory, or
    // another cluster) cannot be resumed from: start over like a compacted resume.
    let requested = index;
    let index = requested.filter(|i| *i <= app.hub.registry_index() + 1);
    let mut cursors = Vec::with_capacity(services.len());
    for s in services.iter() {
        let (slot, mut rx) = app.hub.subscribe(s).map_err(super::hub_full)?;
        rx.borrow_and_update();
        cursors.push(match index {
            Some(i) => Cursor::resume_at(slot, rx, i),
            None => Cursor::snapshot_first(slot, rx),
        });
    }
    app.metrics.watch_subscribers.inc();
    let mut w = Watcher {
        app: app.clone(),
        cursors,
        pending: VecDeque::new(),
        keepalive: Keepalive::new(),
    };
    if let (Some(asked), None) = (requested, index) {
        let notice = WatchEvent::Compacted {
            index: asked,
            oldest: app.hub.floor(),
        };
        w.pending.push_back(sse_frame(
            "compacted",
            asked,
            &serde_json::to_vec(&notice).unwrap_or_default(),
        ));
    }
    app.hub.catch_up(&mut w.cursors, &mut w.pending);
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `due` resolves within `d` (of paused, auto-advancing time).
    async fn due_within(k: &mut Keepalive, d: Duration) -> bool {
        tokio::time::timeout(d, k.due()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_keepalive_is_due_only_after_a_quiet_interval() {
        let mut k = Keepalive::new();
        assert!(!due_within(&mut k, KEEPALIVE - Duration::from_millis(1)).await);
        assert!(due_within(&mut k, Duration::from_millis(2)).await);
        // The caller sent the keepalive: the next is a whole interval away.
        k.sent();
        assert!(!due_within(&mut k, Duration::from_secs(10)).await);
        // A frame 10 s in moves it to 15 s after that frame, not after the keepalive.
        k.sent();
        assert!(!due_within(&mut k, KEEPALIVE - Duration::from_millis(1)).await);
        assert!(due_within(&mut k, Duration::from_millis(2)).await);
    }
}
