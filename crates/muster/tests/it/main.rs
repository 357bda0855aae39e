//! End-to-end tests: real `muster` processes on loopback ports with temporary data directories.

mod api;
mod bad_input;
mod blocking;
mod checks;
mod cli;
mod client;
mod cluster;
mod durability;
mod grpc;
mod harness;
mod leases;
mod partition;
mod protection;
mod watch;
