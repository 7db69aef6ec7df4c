//! A client frame as a node decodes it, and a node's answer as a client decodes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv::rpc::api::{KvRequest, KvResponse};
use ringkv::rpc::codec::decode_incoming;

fuzz_target!(|data: &[u8]| {
    let _ = decode_incoming::<tarpc::ClientMessage<KvRequest>>(data);
    let _ = decode_incoming::<tarpc::Response<KvResponse>>(data);
});
