//! A peer frame as a node decodes it after the handshake, and the answer as the
//! calling node decodes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv::peer::{PeerRequest, PeerResponse};
use ringkv::rpc::codec::decode_incoming;

fuzz_target!(|data: &[u8]| {
    let _ = decode_incoming::<tarpc::ClientMessage<PeerRequest>>(data);
    let _ = decode_incoming::<tarpc::Response<PeerResponse>>(data);
});
