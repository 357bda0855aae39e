//! Muster's registry core: the data model and the deterministic state machine.
//!
//! Nothing in this crate does I/O, reads a clock or spawns a task. Every input carries the time it
//! happened at, so the same commands applied in the same order give byte-identical state on every
//! node of a cluster. The runtime around it (Raft, HTTP, the lease sweeper) lives in
//! `muster-server`.
//!
//! ```text
//!   HTTP / gRPC ──validate──▶ Command ──Raft log──▶ Registry::apply(index, &cmd)
//!                                                     │
//!                                  ┌──────────────────┴──────────────────┐
//!                                  ▼                                     ▼
//!                         Result<Applied, ApplyError>            Vec<Event> (watch, views)
//! ```
//!
//! - [`model`]: instances, statuses, checks, and the limits every field obeys.
//! - [`registry`]: the state machine, its commands, events and snapshots.
//! - [`lease`]: the leader's in-memory lease table (renewals never touch the log).

pub mod health;
mod intern;
pub mod lease;
pub mod model;
pub mod registry;
mod serde_util;

pub use serde_util::{format_timestamp, parse_duration_ms};

pub use lease::{Assessment, LeaseTable, ProtectionConfig, RenewError};
pub use model::{
    Check, CheckKind, CheckMethod, CheckRequest, Instance, InstanceSpec, Metadata, RegisterRequest,
    Status, ValidationError,
};
pub use registry::{
    Applied, ApplyError, Command, Event, EventKind, Limits, Registry, RegistrySnapshot,
};
