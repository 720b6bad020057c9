//! Codec vectors produced by the upstream Go code itself: our peer makes an upstream
//! `remotedialer.Server` emit every message type it sends and prints the raw frames. Each
//! must decode to what upstream meant and re-encode to the identical bytes.

mod support;

use bytes::Bytes;
use remotedialer::codec::{decode, encode, Payload};
use std::process::Command;

#[derive(serde::Deserialize)]
struct Vector {
    name: String,
    hex: String,
    conn_id: i64,
    #[serde(rename = "type")]
    type_code: i64,
    payload_hex: String,
    payload_is_prefix: bool,
}

fn payload_bytes(payload: &Payload) -> Vec<u8> {
    match payload {
        Payload::Data(bytes) => bytes.to_vec(),
        Payload::Connect { proto, address } => format!("{proto}/{address}").into_bytes(),
        Payload::Error(text) => text.clone().into_bytes(),
        Payload::Pause | Payload::Resume => Vec::new(),
        other => panic!("upstream server emitted an unexpected message {other:?}"),
    }
}

#[test]
fn frames_encoded_by_upstream_decode_and_reencode_identically() {
    let output = Command::new(&support::go_binaries().peer)
        .arg("vectors")
        .output()
        .expect("run peer vectors");
    assert!(
        output.status.success(),
        "peer vectors failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let vectors: Vec<Vector> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("vector json"))
        .collect();
    let names: Vec<&str> = vectors.iter().map(|v| v.name.as_str()).collect();
    for wanted in [
        "server_connect",
        "server_data",
        "server_pause",
        "server_resume",
        "server_error_eof",
        "server_error_not_found",
    ] {
        assert!(
            names.contains(&wanted),
            "missing vector {wanted} in {names:?}"
        );
    }

    for vector in &vectors {
        let frame = Bytes::from(hex::decode(&vector.hex).expect("frame hex"));
        let message = decode(frame.clone())
            .unwrap_or_else(|error| panic!("{}: does not decode: {error}", vector.name));
        assert_eq!(message.conn_id, vector.conn_id, "{}", vector.name);
        assert_eq!(
            message.payload.type_code(),
            vector.type_code,
            "{}",
            vector.name
        );
        let expected = hex::decode(&vector.payload_hex).expect("payload hex");
        let actual = payload_bytes(&message.payload);
        if vector.payload_is_prefix {
            assert!(
                actual.starts_with(&expected),
                "{}: {:?}",
                vector.name,
                message.payload
            );
        } else {
            assert_eq!(actual, expected, "{}", vector.name);
        }
        assert_eq!(
            encode(&message),
            frame,
            "{}: re-encoding differs",
            vector.name
        );
    }
}
