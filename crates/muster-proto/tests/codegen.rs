//! The generated gRPC code in `src/gen/` is checked in (so building needs no `protoc`); this
//! test generates it again from `proto/` (with protox, a protobuf compiler in Rust) and fails
//! when the two differ. `MUSTER_REGENERATE=1 cargo test -p muster-proto --test codegen`
//! rewrites the checked-in file.

use std::path::Path;

#[test]
fn the_checked_in_grpc_code_matches_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = root.join("proto");
    let files = protox::compile([proto.join("muster/v1/registry.proto")], [&proto])
        .expect("the proto compiles");
    let out = tempfile::tempdir().expect("tempdir");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .out_dir(out.path())
        .compile_fds(files)
        .expect("code generation");
    let generated = std::fs::read_to_string(out.path().join("muster.v1.rs")).expect("generated");
    let checked_in_path = root.join("src/gen/muster.v1.rs");
    if std::env::var_os("MUSTER_REGENERATE").is_some() {
        std::fs::write(&checked_in_path, &generated).expect("write");
        return;
    }
    let checked_in = std::fs::read_to_string(&checked_in_path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "src/gen/muster.v1.rs is stale: run MUSTER_REGENERATE=1 cargo test -p muster-proto --test codegen"
    );
}
