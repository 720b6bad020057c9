//! The remotedialer message codec: one binary websocket message is one [`Message`].
//!
//! Layout (as upstream `message.go`): signed varints `id`, `connID`, `type`; a legacy
//! `deadline` varint only for Data and Connect; then the payload up to the end of the frame.
//! Decoding never panics and never allocates more than the frame it is given.

use bytes::{BufMut, Bytes, BytesMut};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

/// Longest Data/Connect header: two 10-byte varints (id, connID), a 1-byte type and the
/// 3-byte legacy deadline. Reserved in front of outgoing Data payloads.
pub const MAX_HEADER_LEN: usize = 24;

/// The deadline every upstream sender writes (15 s in milliseconds); receivers ignore it.
pub const LEGACY_DEADLINE_MS: i64 = 15_000;

/// Numeric message type codes (`iota + 1` upstream).
pub mod type_code {
    pub const DATA: i64 = 1;
    pub const CONNECT: i64 = 2;
    pub const ERROR: i64 = 3;
    pub const ADD_CLIENT: i64 = 4;
    pub const REMOVE_CLIENT: i64 = 5;
    pub const PAUSE: i64 = 6;
    pub const RESUME: i64 = 7;
    pub const SYNC_CONNECTIONS: i64 = 8;
}

/// The payload of a message, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Data(Bytes),
    Connect {
        proto: String,
        address: String,
    },
    /// Error text; `"EOF"` is a normal close.
    Error(String),
    AddClient(String),
    RemoveClient(String),
    Pause,
    Resume,
    SyncConnections(Vec<i64>),
    /// A type this codec does not know; receivers ignore it, like upstream does.
    Unknown {
        type_code: i64,
        body: Bytes,
    },
}

impl Payload {
    pub fn type_code(&self) -> i64 {
        match self {
            Payload::Data(_) => type_code::DATA,
            Payload::Connect { .. } => type_code::CONNECT,
            Payload::Error(_) => type_code::ERROR,
            Payload::AddClient(_) => type_code::ADD_CLIENT,
            Payload::RemoveClient(_) => type_code::REMOVE_CLIENT,
            Payload::Pause => type_code::PAUSE,
            Payload::Resume => type_code::RESUME,
            Payload::SyncConnections(_) => type_code::SYNC_CONNECTIONS,
            Payload::Unknown { type_code, .. } => *type_code,
        }
    }
}

/// One remotedialer message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender's message counter; receivers ignore it.
    pub id: i64,
    /// Virtual connection number, 0 for session-level messages.
    pub conn_id: i64,
    pub payload: Payload,
}

/// Why a frame could not be decoded. Any of these ends the session that received it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame ended inside the {0} field")]
    Truncated(&'static str),
    #[error("varint in the {0} field overflows 64 bits")]
    VarintOverflow(&'static str),
    #[error("connect payload has no '/' between proto and address")]
    ConnectWithoutSlash,
    #[error("sync connections payload length {0} is not a multiple of 8")]
    SyncLength(usize),
}

fn has_deadline(type_code: i64) -> bool {
    type_code == type_code::DATA || type_code == type_code::CONNECT
}

/// Appends `value` as a Go signed varint (zig-zag, then LEB128).
pub fn put_varint(out: &mut impl BufMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

/// Reads a Go signed varint from the front of `input`, returning the value and bytes used.
/// Rejects the same overlong encodings Go's `binary.ReadUvarint` rejects.
fn read_varint(input: &[u8], field: &'static str) -> Result<(i64, usize), DecodeError> {
    const MAX_LEN: usize = 10;
    let mut unsigned: u64 = 0;
    let mut shift = 0u32;
    for (index, &byte) in input.iter().enumerate() {
        if index == MAX_LEN {
            return Err(DecodeError::VarintOverflow(field));
        }
        if byte < 0x80 {
            if index == MAX_LEN - 1 && byte > 1 {
                return Err(DecodeError::VarintOverflow(field));
            }
            unsigned |= u64::from(byte) << shift;
            let signed = ((unsigned >> 1) as i64) ^ -((unsigned & 1) as i64);
            return Ok((signed, index + 1));
        }
        unsigned |= u64::from(byte & 0x7f) << shift;
        shift += 7;
    }
    if input.len() >= MAX_LEN {
        return Err(DecodeError::VarintOverflow(field));
    }
    Err(DecodeError::Truncated(field))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Decodes one binary websocket message.
pub fn decode(frame: Bytes) -> Result<Message, DecodeError> {
    let mut offset = 0;
    let (id, used) = read_varint(&frame[offset..], "id")?;
    offset += used;
    let (conn_id, used) = read_varint(&frame[offset..], "connID")?;
    offset += used;
    let (type_code, used) = read_varint(&frame[offset..], "type")?;
    offset += used;
    if has_deadline(type_code) {
        let (_, used) = read_varint(&frame[offset..], "deadline")?;
        offset += used;
    }
    let body = frame.slice(offset..);
    let payload = match type_code {
        type_code::DATA => Payload::Data(body),
        type_code::CONNECT => {
            let slash = body
                .iter()
                .position(|&b| b == b'/')
                .ok_or(DecodeError::ConnectWithoutSlash)?;
            Payload::Connect {
                proto: text(&body[..slash]),
                address: text(&body[slash + 1..]),
            }
        }
        type_code::ERROR => Payload::Error(text(&body)),
        type_code::ADD_CLIENT => Payload::AddClient(text(&body)),
        type_code::REMOVE_CLIENT => Payload::RemoveClient(text(&body)),
        type_code::PAUSE => Payload::Pause,
        type_code::RESUME => Payload::Resume,
        type_code::SYNC_CONNECTIONS => {
            if body.len() % 8 != 0 {
                return Err(DecodeError::SyncLength(body.len()));
            }
            Payload::SyncConnections(
                body.chunks_exact(8)
                    .map(|chunk| {
                        let mut le = [0u8; 8];
                        le.copy_from_slice(chunk);
                        i64::from_le_bytes(le)
                    })
                    .collect(),
            )
        }
        other => Payload::Unknown {
            type_code: other,
            body,
        },
    };
    Ok(Message {
        id,
        conn_id,
        payload,
    })
}

/// Writes the header for a message of `type_code` into `out`.
pub fn encode_header(out: &mut impl BufMut, id: i64, conn_id: i64, type_code: i64) {
    put_varint(out, id);
    put_varint(out, conn_id);
    put_varint(out, type_code);
    if has_deadline(type_code) {
        put_varint(out, LEGACY_DEADLINE_MS);
    }
}

/// Encodes a message into one binary frame.
pub fn encode(message: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(MAX_HEADER_LEN + 64);
    encode_header(
        &mut out,
        message.id,
        message.conn_id,
        message.payload.type_code(),
    );
    match &message.payload {
        Payload::Data(data) => out.extend_from_slice(data),
        Payload::Connect { proto, address } => {
            out.extend_from_slice(proto.as_bytes());
            out.put_u8(b'/');
            out.extend_from_slice(address.as_bytes());
        }
        Payload::Error(text) | Payload::AddClient(text) | Payload::RemoveClient(text) => {
            out.extend_from_slice(text.as_bytes())
        }
        Payload::Pause | Payload::Resume => {}
        Payload::SyncConnections(ids) => {
            for id in ids {
                out.put_slice(&id.to_le_bytes());
            }
        }
        Payload::Unknown { body, .. } => out.extend_from_slice(body),
    }
    out.freeze()
}

/// Encodes a Data frame whose payload already sits in `buffer[MAX_HEADER_LEN..]`, writing the
/// header into the reserved space in front so the payload is never copied.
pub fn encode_data_in_place(mut buffer: BytesMut, id: i64, conn_id: i64) -> Bytes {
    let mut header = [0u8; MAX_HEADER_LEN];
    let mut cursor = &mut header[..];
    encode_header(&mut cursor, id, conn_id, type_code::DATA);
    let header_len = MAX_HEADER_LEN - cursor.len();
    let start = MAX_HEADER_LEN - header_len;
    buffer[start..MAX_HEADER_LEN].copy_from_slice(&header[..header_len]);
    let mut frame = buffer.freeze();
    bytes::Buf::advance(&mut frame, start);
    frame
}

/// Process-wide message id counter. Like upstream it starts at a random 63-bit value;
/// receivers ignore ids, so this only keeps our frames shaped like the real ones.
pub fn next_message_id() -> i64 {
    static COUNTER: OnceLock<AtomicI64> = OnceLock::new();
    COUNTER
        .get_or_init(|| AtomicI64::new(rand::random::<i64>() & (i64::MAX >> 1)))
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex_bytes(text: &str) -> Bytes {
        Bytes::from(hex::decode(text.replace(' ', "")).expect("valid hex"))
    }

    // Examples from the protocol notes (§1.3).
    #[test]
    fn decodes_documented_connect() {
        let message = decode(hex_bytes(
            "d0 0f 04 04 b0 ea 01 74 63 70 2f 6e 6f 74 2d 75 73 65 64 3a 38 30",
        ))
        .expect("decodes");
        assert_eq!(message.id, 1000);
        assert_eq!(message.conn_id, 2);
        assert_eq!(
            message.payload,
            Payload::Connect {
                proto: "tcp".into(),
                address: "not-used:80".into()
            }
        );
    }

    #[test]
    fn encodes_documented_frames() {
        let cases = [
            (
                Message {
                    id: 77,
                    conn_id: 2,
                    payload: Payload::Error("EOF".into()),
                },
                "9a 01 04 06 45 4f 46",
            ),
            (
                Message {
                    id: 78,
                    conn_id: 2,
                    payload: Payload::Pause,
                },
                "9c 01 04 0c",
            ),
            (
                Message {
                    id: 79,
                    conn_id: 2,
                    payload: Payload::Resume,
                },
                "9e 01 04 0e",
            ),
            (
                Message {
                    id: 5002,
                    conn_id: 0,
                    payload: Payload::SyncConnections(vec![2, 7]),
                },
                "94 4e 00 10 02 00 00 00 00 00 00 00 07 00 00 00 00 00 00 00",
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(encode(&message), hex_bytes(expected), "{message:?}");
            assert_eq!(decode(hex_bytes(expected)).expect("decodes"), message);
        }
    }

    #[test]
    fn data_in_place_matches_plain_encoding() {
        let payload = b"GET /ping HTTP/1.1\r\n";
        let mut buffer = BytesMut::zeroed(MAX_HEADER_LEN);
        buffer.extend_from_slice(payload);
        let in_place = encode_data_in_place(buffer, i64::MAX, 3);
        let plain = encode(&Message {
            id: i64::MAX,
            conn_id: 3,
            payload: Payload::Data(Bytes::from_static(payload)),
        });
        assert_eq!(in_place, plain);
    }

    #[test]
    fn rejects_malformed_frames() {
        assert_eq!(decode(Bytes::new()), Err(DecodeError::Truncated("id")));
        assert_eq!(
            decode(hex_bytes("02 04 02")),
            Err(DecodeError::Truncated("deadline"))
        );
        assert_eq!(
            decode(hex_bytes("02 04 04 b0 ea 01 74 63 70")),
            Err(DecodeError::ConnectWithoutSlash)
        );
        assert_eq!(
            decode(hex_bytes("02 00 10 01 02 03")),
            Err(DecodeError::SyncLength(3))
        );
        assert_eq!(
            decode(hex_bytes("ff ff ff ff ff ff ff ff ff 02 00 02")),
            Err(DecodeError::VarintOverflow("id"))
        );
        assert_eq!(
            decode(hex_bytes("ff ff ff ff ff ff ff ff ff ff 01")),
            Err(DecodeError::VarintOverflow("id"))
        );
    }

    #[test]
    fn unknown_types_are_kept_as_unknown() {
        let message = decode(hex_bytes("02 00 12 aa bb")).expect("decodes");
        assert_eq!(
            message.payload,
            Payload::Unknown {
                type_code: 9,
                body: hex_bytes("aa bb")
            }
        );
    }

    fn any_payload() -> impl Strategy<Value = Payload> {
        let text = "[ -~]{0,40}";
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512).prop_map(|v| Payload::Data(v.into())),
            ("[a-z]{1,8}", "[ -~]{0,80}")
                .prop_map(|(proto, address)| Payload::Connect { proto, address }),
            text.prop_map(Payload::Error),
            text.prop_map(Payload::AddClient),
            text.prop_map(Payload::RemoveClient),
            Just(Payload::Pause),
            Just(Payload::Resume),
            proptest::collection::vec(any::<i64>(), 0..32).prop_map(Payload::SyncConnections),
            (
                9i64..1_000_000,
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(type_code, body)| Payload::Unknown {
                    type_code,
                    body: body.into()
                }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(id in any::<i64>(), conn_id in any::<i64>(), payload in any_payload()) {
            let message = Message { id, conn_id, payload };
            let frame = encode(&message);
            prop_assert_eq!(decode(frame).expect("own frames decode"), message);
        }

        #[test]
        fn varints_round_trip(value in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            prop_assert!(out.len() <= 10);
            prop_assert_eq!(read_varint(&out, "v"), Ok((value, out.len())));
        }

        /// The fuzz target's property, run in CI: arbitrary bytes never panic, and a
        /// successful decode re-encodes to a frame that decodes to the same message.
        #[test]
        fn decoder_survives_random_input(frame in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(message) = decode(Bytes::from(frame)) {
                let again = decode(encode(&message)).expect("re-encoded frame decodes");
                prop_assert_eq!(again.conn_id, message.conn_id);
                prop_assert_eq!(again.payload.type_code(), message.payload.type_code());
            }
        }
    }
}
