//! Entry points for the fuzz targets (`fuzz/`): the decoders of bytes read from
//! disk, reachable from outside the crate without widening its API. Not for
//! other use.

use crate::log::record::{self, HEADER_LEN};

/// Decodes `body` as a record body whose header carries the right length and
/// checksum (random bytes would almost never pass the checksum, so the fuzzer
/// could not reach the parser behind it). Returns the ops decoded.
pub fn record_body(body: &[u8], salted: bool) -> usize {
    let salt = salted.then_some(*b"fuzzsalt");
    let mut rec = vec![0u8; HEADER_LEN];
    rec.extend_from_slice(body);
    if body.len() >= 9 {
        record::seal(&mut rec, 1, &salt);
    }
    match record::decode(&rec, &salt) {
        Ok((_, ops)) => ops.len(),
        Err(_) => 0,
    }
}

/// Walks `raw` as the entries of hint file `id`. Returns the entries read.
pub fn hint_entries(raw: &[u8], id: u32) -> usize {
    crate::log::hint::entries(raw, id)
        .take(1 << 20)
        .map_while(|e| e)
        .count()
}
