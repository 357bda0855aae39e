use super::*;

const DESIGN_EXAMPLE: &str = r#"{"service":"inventory-api","instanceId":"inventory-api-7f9c8d4f7d-h2kgw","host":"10.42.6.18","port":8080,"zone":"ap-south-1a","region":"ap-south-1","version":"2026.04.18.2","weight":100,"healthEndpoint":"/health/ready"}"#;

fn req(json: &str) -> RegisterRequest {
    serde_json::from_str(json).expect("valid JSON")
}

fn err(json: &str) -> ValidationError {
    req(json).validate().expect_err("must be rejected")
}

#[test]
fn the_design_example_validates() {
    let (spec, healthy) = req(DESIGN_EXAMPLE).validate().expect("valid");
    assert!(!healthy);
    assert_eq!(spec.service().as_str(), "inventory-api");
    assert_eq!(spec.port, 8080);
    assert_eq!(spec.weight, 100);
    assert_eq!(spec.lease_ttl(), DEFAULT_LEASE_TTL_MS);
    let check = spec.check().expect("healthEndpoint becomes a check");
    assert_eq!(check.kind, CheckKind::Http);
    assert_eq!(check.target, "/health/ready");
}

#[test]
fn unknown_fields_are_rejected_by_serde() {
    let e =
        serde_json::from_str::<RegisterRequest>(r#"{"service":"a","colour":"red"}"#).unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
}

#[test]
fn missing_fields_name_the_field() {
    let e = err(r#"{"service":"a","instanceId":"x","host":"h"}"#);
    assert_eq!((e.code, e.field.as_str()), ("missing_field", "port"));
}

#[test]
fn out_of_range_values_say_what_was_expected() {
    let base =
        |extra: &str| format!(r#"{{"service":"a","instanceId":"x","host":"h","port":1{extra}}}"#);
    let cases = [
        (
            r#"{"service":"a","instanceId":"x","host":"h","port":0}"#.to_string(),
            "port",
            "port must be 1-65535, got 0",
        ),
        (
            r#"{"service":"a","instanceId":"x","host":"h","port":70000}"#.to_string(),
            "port",
            "got 70000",
        ),
        (
            r#"{"service":"a","instanceId":"x","host":"h","port":1e20}"#.to_string(),
            "port",
            "got 1e+20",
        ),
        (
            r#"{"service":"a","instanceId":"x","host":"h","port":80.5}"#.to_string(),
            "port",
            "got 80.5",
        ),
        (base(r#","weight":-1"#), "weight", "weight must be 0-10000"),
        (
            base(r#","check":{"type":"tcp","failuresBeforeUnhealthy":0}"#),
            "check.failuresBeforeUnhealthy",
            "1-100",
        ),
        (
            base(r#","weight":10001"#),
            "weight",
            "weight must be 0-10000",
        ),
        (
            base(r#","leaseTtl":"500ms""#),
            "leaseTtl",
            "between 1s and 1h",
        ),
        (base(r#","leaseTtl":"2h""#), "leaseTtl", "between 1s and 1h"),
        (
            base(r#","leaseTtl":"soon""#),
            "leaseTtl",
            "expected a duration",
        ),
        (
            base(r#","status":"DRAINING""#),
            "status",
            "STARTING or HEALTHY",
        ),
        (
            base(r#","healthEndpoint":"health""#),
            "healthEndpoint",
            "path starting with '/'",
        ),
        (
            base(r#","check":{"type":"smtp"}"#),
            "check.type",
            "http, tcp, grpc or ttl",
        ),
        (
            base(r#","check":{"type":"tcp","interval":"1s","timeout":"5s"}"#),
            "check.timeout",
            "must not exceed",
        ),
        (
            base(r#","check":{"type":"http","target":"https://10.0.0.1/ready","tls":false}"#),
            "check.tls",
            "probed over TLS",
        ),
        (
            base(r#","check":{"type":"http","target":"http://10.0.0.1/ready","tls":true}"#),
            "check.tls",
            "use an https:// URL",
        ),
        (
            base(r#","check":{"type":"http","target":"/ready","tlsSkipVerify":true}"#),
            "check.tlsSkipVerify",
            "over TLS only",
        ),
        (
            base(r#","check":{"type":"tcp","tls":true}"#),
            "check.tls",
            "HTTP and gRPC checks only",
        ),
        (
            base(r#","check":{"type":"http","target":"ftp://10.0.0.1/ready"}"#),
            "check.target",
            "https:// URL",
        ),
        (
            base(r#","check":{"type":"tcp","method":"GET"}"#),
            "check.method",
            "HTTP checks only",
        ),
        (
            base(r#","check":{"type":"http","target":"/r","method":"POST"}"#),
            "check.method",
            "GET or HEAD",
        ),
        (
            base(r#","check":{"type":"http","target":"/r","headers":{"bad name":"v"}}"#),
            "check.headers.bad name",
            "token characters",
        ),
        (
            base(r#","check":{"type":"http","target":"/r","headers":{"Content-Length":"5"}}"#),
            "check.headers.Content-Length",
            "set by the prober",
        ),
        (
            base(r#","check":{"type":"http","target":"/r","headers":{"a":"x\u0000"}}"#),
            "check.headers.a",
            "visible ASCII",
        ),
        (
            base(r#","check":{"type":"http","target":"/r","headers":{"X-A":"1","x-a":"2"}}"#),
            "check.headers.x-a",
            "given twice",
        ),
        (
            base(
                r#","check":{"type":"http","target":"/r","headers":{"h0":"v","h1":"v","h2":"v","h3":"v","h4":"v","h5":"v","h6":"v","h7":"v","h8":"v","h9":"v","h10":"v","h11":"v","h12":"v","h13":"v","h14":"v","h15":"v","h16":"v"}}"#,
            ),
            "check.headers",
            "at most 16",
        ),
        (
            base(&format!(r#","version":"{}""#, "v".repeat(65))),
            "version",
            "at most 64",
        ),
        (base(r#","tags":[""]"#), "tags[0]", "a tag must be"),
    ];
    for (json, field, message) in cases {
        let e = err(&json);
        assert_eq!(e.field, field, "{json}");
        assert!(e.message.contains(message), "{json}: {}", e.message);
    }
}

#[test]
fn service_and_id_rules() {
    for bad in ["", "-a", "a-", "A", "a_b", &"a".repeat(64)] {
        assert!(validate_service(bad, "service").is_err(), "{bad:?}");
    }
    for good in ["a", "inventory-api", "a1", &"a".repeat(63)] {
        assert!(validate_service(good, "service").is_ok(), "{good:?}");
    }
    assert!(validate_instance_id(&"x".repeat(129), "instanceId").is_err());
    assert!(validate_instance_id("pod/1", "instanceId").is_err());
    assert!(validate_instance_id("a.b_c:d-E9", "instanceId").is_ok());
}

#[test]
fn host_rules() {
    for good in ["10.0.0.1", "::1", "db.internal", "a-b.example.com."] {
        assert!(validate_host(good).is_ok(), "{good:?}");
    }
    for bad in [
        "",
        "-a.com",
        "a..b",
        "a b",
        &format!("{}.com", "a".repeat(64)),
    ] {
        assert!(validate_host(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn collection_limits() {
    let tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let json = serde_json::json!({"service":"a","instanceId":"x","host":"h","port":1,"tags":tags})
        .to_string();
    assert_eq!(err(&json).field, "tags");
    let md: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let json =
        serde_json::json!({"service":"a","instanceId":"x","host":"h","port":1,"metadata":md})
            .to_string();
    assert!(err(&json).message.contains("at most 64"));
    let md: BTreeMap<String, String> = [("k".to_string(), "v".repeat(4096))].into();
    let json =
        serde_json::json!({"service":"a","instanceId":"x","host":"h","port":1,"metadata":md})
            .to_string();
    assert!(err(&json).message.contains("4096 bytes"));
}

#[test]
fn healthy_at_registration_only_without_an_active_check() {
    let (_, healthy) =
        req(r#"{"service":"a","instanceId":"x","host":"h","port":1,"status":"HEALTHY"}"#)
            .validate()
            .unwrap();
    assert!(healthy);
    let e = err(
        r#"{"service":"a","instanceId":"x","host":"h","port":1,"status":"HEALTHY","healthEndpoint":"/r"}"#,
    );
    assert_eq!(e.field, "status");
}

#[test]
fn instance_round_trips_through_json() {
    let (spec, _) = req(DESIGN_EXAMPLE).validate().unwrap();
    let inst = Instance {
        spec,
        status: Status::Healthy,
        status_reason: "heartbeat reported ready".into(),
        ready: true,
        live: true,
        registered_at: 1_776_000_000_123,
        status_changed_at: 1_776_000_001_000,
        create_index: 3,
        modify_index: 9,
    };
    let json = serde_json::to_string(&inst).unwrap();
    assert!(
        json.contains(r#""instanceId":"inventory-api-7f9c8d4f7d-h2kgw""#),
        "{json}"
    );
    assert!(json.contains(r#""leaseTtl":"30s""#), "{json}");
    assert!(json.contains(r#""status":"HEALTHY""#), "{json}");
    assert!(!json.contains("live"), "live shows only when false: {json}");
    let back: Instance = serde_json::from_str(&json).unwrap();
    assert_eq!(back, inst);
    let dead = Instance {
        live: false,
        ..inst
    };
    let json = serde_json::to_string(&dead).unwrap();
    assert!(json.contains(r#""live":false"#), "{json}");
    assert_eq!(serde_json::from_str::<Instance>(&json).unwrap(), dead);
}

#[test]
fn expected_status_ranges() {
    let base = r#"{"service":"s","instanceId":"i","host":"h","port":1,"check":{"type":"http","target":"/r","expectedStatus":"#;
    let check = |status: &str| {
        req(&format!("{base}{status}}}}}"))
            .validate()
            .map(|(spec, _)| spec.check().expect("a check").expected_status)
    };
    assert_eq!(check(r#""200-299""#), Ok(StatusRange { lo: 200, hi: 299 }));
    assert_eq!(check(r#""204""#), Ok(StatusRange { lo: 204, hi: 204 }));
    for bad in [r#""299-200""#, r#""99""#, r#""600""#, r#""2xx""#, r#""""#] {
        let e = check(bad).expect_err(bad);
        assert_eq!(e.field, "check.expectedStatus", "{bad}");
    }
    let tcp = r#"{"service":"s","instanceId":"i","host":"h","port":1,"check":{"type":"tcp","expectedStatus":"200"}}"#;
    assert_eq!(err(tcp).field, "check.expectedStatus");
    // The default is not written out, a range is, and both read back.
    let range = StatusRange { lo: 200, hi: 299 };
    assert_eq!(serde_json::to_string(&range).unwrap(), r#""200-299""#);
    assert!(range.contains(299) && !range.contains(300));
    let d = StatusRange::default();
    assert!(d.contains(200) && d.contains(399) && !d.contains(404));
}

#[test]
fn metadata_is_a_sorted_json_object() {
    let md: Metadata = serde_json::from_str(r#"{"b":"2","a":"1","c":"","a":"3"}"#).unwrap();
    // Ordered by key; a repeated key keeps its last value, as a map would.
    assert_eq!(
        md.iter().collect::<Vec<_>>(),
        [("a", "3"), ("b", "2"), ("c", "")]
    );
    assert_eq!(md.get("b"), Some("2"));
    assert_eq!(md.get("z"), None);
    assert_eq!(md.len(), 3);
    assert_eq!(
        serde_json::to_string(&md).unwrap(),
        r#"{"a":"3","b":"2","c":""}"#
    );
    let empty: Metadata = serde_json::from_str("{}").unwrap();
    assert!(empty.is_empty());
    assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
    assert!(serde_json::from_str::<Metadata>(r#"{"a":1}"#).is_err());
    let collected: Metadata = [("y".to_string(), "1".to_string()), ("x".into(), "2".into())]
        .into_iter()
        .collect();
    assert_eq!(collected.iter().next(), Some(("x", "2")));
}

#[test]
fn empty_optional_fields_are_left_out_and_read_back_as_their_defaults() {
    let (spec, _) = req(r#"{"service":"a","instanceId":"x","host":"h","port":1}"#)
        .validate()
        .unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    for field in [
        "zone",
        "region",
        "version",
        "deploymentGroup",
        "protocol",
        "tags",
        "metadata",
        "check",
        "livenessCheck",
    ] {
        assert!(json.get(field).is_none(), "{field} in {json}");
    }
    // What an earlier version wrote (log entries, snapshots, answers held by clients) has the
    // empty fields spelled out: it reads as the same spec.
    let earlier = serde_json::json!({
        "service": "a", "instanceId": "x", "host": "h", "port": 1, "zone": "", "region": "",
        "version": "", "weight": 100, "deploymentGroup": "", "protocol": "", "tags": [],
        "metadata": {}, "leaseTtl": "30s"
    });
    assert_eq!(
        serde_json::from_value::<InstanceSpec>(earlier).unwrap(),
        spec
    );
    assert_eq!(serde_json::from_value::<InstanceSpec>(json).unwrap(), spec);
}
