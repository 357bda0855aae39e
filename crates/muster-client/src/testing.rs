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
        status_reason: String::new(),
        ready: true,
        live: true,
        registered_at: 0,
        status_changed_at: 0,
        create_index: 1,
        modify_index: 1,
    })
}
