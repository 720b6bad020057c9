//! Fuzzes the frame decoder: no input may panic, and whatever decodes must survive an
//! encode/decode round trip with the same connection id and type.
//! Run with `cargo +nightly fuzz run decode` from `crates/remotedialer`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use remotedialer::codec::{decode, encode};

fuzz_target!(|frame: &[u8]| {
    if let Ok(message) = decode(Bytes::copy_from_slice(frame)) {
        let again = decode(encode(&message)).expect("re-encoded frame decodes");
        assert_eq!(again.conn_id, message.conn_id);
        assert_eq!(again.payload.type_code(), message.payload.type_code());
    }
});
