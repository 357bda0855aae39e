//! The operator commands and the server's configuration layering, through the real binary.

use std::process::{Command, Output};

use serde_json::json;

use crate::harness::{BIN, Muster};

fn muster(addr: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("MUSTER_ADDR")
        .output()
        .expect("run muster")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn operator_commands_print_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let base = m.base.clone();
    let run = move |args: Vec<&'static str>| {
        let base = base.clone();
        async move {
            tokio::task::spawn_blocking(move || muster(&base, &args))
                .await
                .unwrap()
        }
    };
    let o = run(vec![
        "register",
        "--service",
        "inventory-api",
        "--id",
        "inv-1",
        "--host",
        "10.0.0.7",
        "--port",
        "8080",
        "--zone",
        "z1",
        "--healthy",
        "--tag",
        "blue",
        "--meta",
        "team=core",
    ])
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("registered inv-1 (inventory-api)"),
        "{}",
        stdout(&o)
    );

    let o = run(vec!["ls"]).await;
    let out = stdout(&o);
    assert!(out.starts_with("SERVICE"), "{out}");
    assert!(
        out.contains("inventory-api") && out.contains("HEALTHY=1"),
        "{out}"
    );

    let o = run(vec!["ls", "inventory-api"]).await;
    assert!(stdout(&o).contains("10.0.0.7:8080"), "{}", stdout(&o));

    let o = run(vec!["--json", "ls", "inventory-api"]).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON");
    assert_eq!(v["instances"][0]["metadata"]["team"], "core");

    let o = run(vec!["drain", "inv-1", "--reason", "deploy"]).await;
    assert!(stdout(&o).contains("DRAINING — deploy"), "{}", stdout(&o));
    let o = run(vec!["get", "inv-1"]).await;
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("status") && l.ends_with("DRAINING")),
        "{}",
        stdout(&o)
    );
    let o = run(vec!["undrain", "inv-1"]).await;
    assert!(o.status.success());
    let o = run(vec!["heartbeat", "inv-1"]).await;
    assert!(stdout(&o).contains("lease expires at"), "{}", stdout(&o));
    let o = run(vec!["deregister", "inv-1"]).await;
    assert!(stdout(&o).contains("REMOVED"), "{}", stdout(&o));

    // A refused request: one line on stderr, exit code 1.
    let o = run(vec!["deregister", "inv-1"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("error: 404 unknown_instance"),
        "{}",
        stderr(&o)
    );
    let o = run(vec![
        "register",
        "--service",
        "Bad",
        "--id",
        "x",
        "--host",
        "h",
        "--port",
        "1",
    ])
    .await;
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("422 invalid_field") && stderr(&o).contains("(field service)"),
        "{}",
        stderr(&o)
    );

    // The watch command prints the snapshot, then changes.
    let mut child = Command::new(BIN)
        .args(["--addr", &m.base, "watch", "inventory-api"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |rx: &std::sync::mpsc::Receiver<String>| {
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("a line")
    };
    let first = next(&rx);
    assert!(
        first.contains("snapshot") && first.contains("inventory-api"),
        "{first}"
    );
    m.register("inventory-api", "inv-2", json!({})).await;
    let second = next(&rx);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        second.contains("upsert") && second.contains("inv-2") && second.contains("HEALTHY"),
        "{second}"
    );
    m.stop();
}

#[test]
fn an_unreachable_server_is_a_one_line_error() {
    let o = muster("http://127.0.0.1:1", &["ls"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach muster at http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn server_configuration_rejects_unknown_keys_and_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    std::fs::write(&file, "data_dir = \"x\"\ncolour = \"red\"\n").unwrap();
    let o = Command::new(BIN)
        .args(["server", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown field `colour`"),
        "{}",
        stderr(&o)
    );

    let o = Command::new(BIN)
        .args(["server"])
        .env("MUSTER_DATA_DIRR", "x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("unknown environment variable MUSTER_DATA_DIRR"),
        "{}",
        stderr(&o)
    );

    let o = Command::new(BIN)
        .args(["server", "--node-id", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("node_id: must be at least 1"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("muster.toml");
    std::fs::write(&file, "node_id = 3\nmax_body_bytes = 65536\n").unwrap();
    let file = file.to_string_lossy().into_owned();
    let env = [
        ("MUSTER_NODE_ID", "4"),
        ("MUSTER_MAX_BODY_BYTES", "2048"),
        ("MUSTER_CONFIG", file.as_str()),
    ];
    let m = Muster::start_with_env(&dir.path().join("data"), &["--node-id", "5"], &env);
    let (_, c) = m.get("/v1/cluster").await;
    assert_eq!(
        c["nodeId"], 5,
        "the flag wins over the environment and the file"
    );
    let body = json!({"service": "a", "instanceId": "a", "host": "h", "port": 1, "metadata": {"k": "v".repeat(3000)}});
    assert_eq!(
        m.post("/v1/instances", body).await.0,
        413,
        "the environment wins over the file"
    );
    m.stop();
}
