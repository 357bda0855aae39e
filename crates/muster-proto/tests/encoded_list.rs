//! `EncodedList` (what the server answers to `List`, its instances already encoded) is a
//! `ListResponse` on the wire.

use muster_proto::grpc::{EncodedList, Instance, ListResponse};
use prost::Message;

fn instance(id: &str, port: u32) -> Instance {
    Instance {
        service: "payments".into(),
        instance_id: id.into(),
        host: "10.0.0.7".into(),
        port,
        zone: "eu-1a".into(),
        weight: 3,
        tags: vec!["canary".into()],
        metadata: [("team".to_string(), "core".to_string())].into(),
        status: "HEALTHY".into(),
        create_index: 4,
        modify_index: 9,
        ..Default::default()
    }
}

#[test]
fn an_encoded_list_decodes_as_the_list_response_it_stands_for() {
    for instances in [
        vec![],
        vec![instance("a", 80)],
        vec![instance("a", 80), instance("b", 0), Instance::default()],
    ] {
        let expected = ListResponse {
            service: "payments".into(),
            index: 42,
            instances: instances.clone(),
        };
        let encoded = EncodedList {
            service: "payments".into(),
            index: 42,
            instances: instances.iter().map(|i| i.encode_to_vec().into()).collect(),
        };
        let bytes = encoded.encode_to_vec();
        assert_eq!(bytes, expected.encode_to_vec());
        assert_eq!(ListResponse::decode(bytes.as_slice()).unwrap(), expected);
    }
}
