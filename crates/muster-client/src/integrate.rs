//! Feeding other balancers: a `tower::discover::Discover` stream of a resolver's endpoints (so
//! `tower::balance::p2c` works over them), and a tonic channel balanced over them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use futures_util::Stream;
use muster_core::Instance;
use tower::discover::Change;

use crate::resolve::Resolver;

/// The resolver's endpoints as a stream of changes: an `Insert` for each endpoint of the view
/// (and again when its instance changes), a `Remove` when it leaves the view. Each value is
/// made by `make` from the instance. The stream is a `tower::discover::Discover`.
///
/// It follows the published views (so the same filters apply: HEALTHY, deployment groups,
/// regions; the tiers are flattened, so zone preference is the balancer's business), and ends
/// when the resolver is dropped.
pub fn discover<S, F>(
    resolver: &Resolver,
    make: F,
) -> impl Stream<Item = Result<Change<String, S>, Infallible>> + Send + 'static
where
    F: FnMut(&Arc<Instance>) -> S + Send + 'static,
    S: Send + 'static,
{
    let shared = resolver.shared();
    let state = (HashMap::<String, u64>::new(), VecDeque::new(), make);
    futures_util::stream::unfold(state, move |(mut known, mut pending, mut make)| {
        let shared = shared.clone();
        async move {
            loop {
                if let Some(change) = pending.pop_front() {
                    return Some((Ok(change), (known, pending, make)));
                }
                let notified = shared.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.closed() {
                    return None;
                }
                let view = shared.current_view();
                let mut seen = HashMap::with_capacity(known.len());
                for e in view.endpoints() {
                    let i = e.instance();
                    let id = i.spec.instance_id.to_string();
                    if known.get(&id) != Some(&i.modify_index) {
                        pending.push_back(Change::Insert(id.clone(), make(i)));
                    }
                    seen.insert(id, i.modify_index);
                }
                for id in known.keys().filter(|id| !seen.contains_key(*id)) {
                    pending.push_back(Change::Remove(id.clone()));
                }
                known = seen;
                if pending.is_empty() {
                    notified.await;
                }
            }
        }
    })
}

/// A tonic channel balanced over the resolver's endpoints (`http://host:port`, plaintext),
/// kept up to date by a task that ends when the channel is dropped.
pub fn tonic_channel(resolver: &Resolver) -> tonic::transport::Channel {
    use futures_util::StreamExt;
    let (channel, sender) = tonic::transport::Channel::balance_channel::<String>(64);
    let changes = discover(resolver, |i| {
        let host = &i.spec.host;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        tonic::transport::Endpoint::from_shared(format!("http://{host}:{}", i.spec.port))
    });
    tokio::spawn(async move {
        tokio::pin!(changes);
        loop {
            let next = tokio::select! {
                next = changes.next() => next,
                // The channel was dropped: stop following.
                _ = sender.closed() => return,
            };
            let Some(Ok(change)) = next else { return };
            use tonic::transport::channel::Change as TonicChange;
            let change = match change {
                Change::Insert(id, Ok(endpoint)) => TonicChange::Insert(id, endpoint),
                Change::Insert(id, Err(e)) => {
                    tracing::warn!(instance = %id, error = %e, "not a usable gRPC address");
                    continue;
                }
                Change::Remove(id) => TonicChange::Remove(id),
            };
            if sender.send(change).await.is_err() {
                return; // the channel is gone
            }
        }
    });
    channel
}
