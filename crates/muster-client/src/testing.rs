//! Helpers for the crate's unit tests.

use std::sync::Arc;

use muster_core::{Instance, RegisterRequest, Status};

/// A HEALTHY instance `id` in `zone` (region from the zone's first letter: "a1" is region "a").
pub(crate) fn instance(id: &str, zone: &str, weight: u32, group: &str) -> Arc<Instance> {
    let spec = RegisterRequest {
        service: Some("inventory-api".into()),
        instance_id: Some(id.into()),
        host: Some("10.0.0.1".into()),
        port: Some(8080.into()),
        zone: Some(zone.into()),
        region: Some(zone[..1].into()),
        weight: Some(weight.into()),
        deployment_group: (!group.is_empty()).then(|| group.into()),
        ..Default::default()
    }
    .validate()
    .expect("valid")
    .0;
    Arc::new(Instance {
        spec,
        status: Status::Healthy,
        status_reason: "".into(),
        ready: true,
        live: true,
        registered_at: 0,
        status_changed_at: 0,
        create_index: 1,
        modify_index: 1,
    })
}

/// Instance `id` of `inventory-api` (zone a1) with `status` (ready when HEALTHY).
pub(crate) fn with_status(id: &str, status: Status) -> Instance {
    Instance {
        status,
        ready: status == Status::Healthy,
        ..Instance::clone(&instance(id, "a1", 100, ""))
    }
}

/// A current-thread runtime for tests that drive async code from a plain `#[test]`.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}
