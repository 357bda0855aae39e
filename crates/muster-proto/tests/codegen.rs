//! Generated gRPC code is checked in (so building needs no `protoc`): Muster's own API in
//! `src/gen/`, and the part of etcd's API the benchmark speaks in `muster-bench/src/gen/`.
//! This test generates both again from their `.proto` files (with protox, a protobuf compiler
//! in Rust) and fails when the code differs. `MUSTER_REGENERATE=1 cargo test -p muster-proto
//! --test codegen` rewrites the checked-in files.

use std::path::Path;

/// Generates `proto` (relative to `include`) with `builder` into `checked_in`; `package` names
/// the generated file; fails when the checked-in file is stale.
fn check(
    include: &Path,
    proto: &str,
    package: &str,
    checked_in: &Path,
    builder: tonic_prost_build::Builder,
) {
    let files = protox::compile([include.join(proto)], [include]).expect("the proto compiles");
    let out = tempfile::tempdir().expect("tempdir");
    builder
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(files)
        .expect("code generation");
    let generated =
        std::fs::read_to_string(out.path().join(format!("{package}.rs"))).expect("generated");
    if std::env::var_os("MUSTER_REGENERATE").is_some() {
        std::fs::write(checked_in, &generated).expect("write");
        return;
    }
    let current = std::fs::read_to_string(checked_in).unwrap_or_default();
    assert!(
        current == generated,
        "{} is stale: run MUSTER_REGENERATE=1 cargo test -p muster-proto --test codegen",
        checked_in.display()
    );
}

#[test]
fn the_checked_in_grpc_code_matches_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The messages and the client.
    check(
        &root.join("proto"),
        "muster/v1/registry.proto",
        "muster.v1",
        &root.join("src/gen/muster.v1.rs"),
        tonic_prost_build::configure().build_server(false),
    );
    // The server, over the messages above, except that `List` answers an `EncodedList`: the
    // same bytes on the wire, its instances already encoded (served from the watch hub's view).
    check(
        &root.join("proto"),
        "muster/v1/registry.proto",
        "muster.v1",
        &root.join("src/gen/muster.v1.server.rs"),
        tonic_prost_build::configure()
            .build_client(false)
            .extern_path(".muster.v1", "crate::grpc")
            .extern_path(".muster.v1.ListResponse", "crate::grpc::EncodedList"),
    );
}

#[test]
fn the_checked_in_etcd_client_matches_its_proto() {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../muster-bench");
    check(
        &bench.join("proto"),
        "etcd.proto",
        "etcdserverpb",
        &bench.join("src/gen/etcdserverpb.rs"),
        tonic_prost_build::configure().build_server(false),
    );
}
