//! Stored objects and contexts: an object's bytes as a replica decodes them (from
//! its disk or a peer), a context as a client hands it back (text and binary),
//! and a context's MAC check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringkv::object::{Context, ContextKey, Object};

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = Object::decode(data) {
        let _ = object.encode();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Context::from_text(text);
    }
    if let Ok(ctx) = postcard::from_bytes::<Context>(data) {
        let key = ContextKey::of_cluster(&ringkv_gossip::ClusterKey::derive(b"fuzzing secret"));
        let _ = key.verify(b"key", &ctx);
        let _ = ctx.clock();
        let _ = ctx.merge(&Context::empty());
        let _ = ctx.to_text();
    }
});
