//! `GET /v1/watch`: Server-Sent Events for one or more services.
//!
//! A stream starts with a `snapshot` event per service (or, when resuming with `index`, the
//! events after that index), then sends one `upsert` or `delete` event per change, each with its
//! index as the SSE `id`. When the asked index is older than the retained history, a `compacted`
//! event comes first, then fresh snapshots. Frames are encoded once per change and shared by
//! every watcher.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use muster_proto::{MAX_WATCH_SERVICES, WatchEvent};
use tokio::sync::watch;

use super::error::ApiError;
use super::{AppRef, AppState, extract};
use crate::hub::{Since, Slot, sse_frame};

/// Comment sent when nothing else was for this long, so proxies keep the stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

struct Followed {
    slot: Arc<Slot>,
    rx: watch::Receiver<u64>,
    /// Index through which this watcher has been sent the service's state.
    sent: u64,
}

struct Watcher {
    app: Arc<AppState>,
    followed: Vec<Followed>,
    pending: VecDeque<Bytes>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.app.metrics.watch_subscribers.dec();
    }
}

impl Watcher {
    /// Queues a service's snapshot and records its index.
    fn snapshot(&mut self, i: usize) {
        let view = self.followed[i].slot.view();
        self.followed[i].sent = view.index;
        self.pending.push_back(view.snapshot_frame());
    }

    fn compacted(&mut self, asked: u64) {
        let event = WatchEvent::Compacted {
            index: asked,
            oldest: self.app.hub.floor(),
        };
        let data = serde_json::to_vec(&event).unwrap_or_default();
        self.pending.push_back(sse_frame("compacted", asked, &data));
    }

    /// Queues what service `i` has after `sent`; on a gap, a compacted event and a snapshot.
    fn catch_up(&mut self, i: usize) {
        let f = &self.followed[i];
        match f.slot.since(f.sent, self.app.hub.floor()) {
            Since::Events(frames) => {
                for (index, frame) in frames {
                    self.followed[i].sent = index;
                    self.pending.push_back(frame);
                }
            }
            Since::Compacted => {
                let asked = f.sent;
                self.compacted(asked);
                self.snapshot(i);
            }
        }
    }

    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            let changed = {
                let waits = self.followed.iter_mut().map(|f| Box::pin(f.rx.changed()));
                match tokio::time::timeout(KEEPALIVE, futures_util::future::select_all(waits)).await
                {
                    Err(_) => None,
                    Ok((result, i, _)) => Some(result.map(|()| i)),
                }
            };
            match changed {
                None => return Some(Bytes::from_static(b": keepalive\n\n")),
                Some(Err(_)) => return None,
                Some(Ok(i)) => {
                    self.followed[i].rx.borrow_and_update();
                    self.catch_up(i);
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
    for s in &services {
        muster_core::model::validate_service(s, "service")
            .map_err(|e| ApiError::bad_param("service", e.message))?;
    }
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
    let followed = services
        .iter()
        .map(|s| {
            let slot = app.hub.slot_or_create(s);
            let mut rx = slot.subscribe();
            rx.borrow_and_update();
            Followed { slot, rx, sent: 0 }
        })
        .collect();
    app.metrics.watch_subscribers.inc();
    let mut w = Watcher {
        app: app.clone(),
        followed,
        pending: VecDeque::new(),
    };
    match index {
        Some(asked) if asked >= app.hub.floor() => {
            for i in 0..w.followed.len() {
                w.followed[i].sent = asked;
                w.catch_up(i);
            }
        }
        Some(asked) => {
            w.compacted(asked);
            for i in 0..w.followed.len() {
                w.snapshot(i);
            }
        }
        None => {
            for i in 0..w.followed.len() {
                w.snapshot(i);
            }
        }
    }
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
