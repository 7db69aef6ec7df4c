//! A log record as recovery decodes it, behind a valid checksum (salted and not),
//! and a hint file's entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringkv_storage::fuzzing::record_body(data, false);
    let _ = ringkv_storage::fuzzing::record_body(data, true);
    let _ = ringkv_storage::fuzzing::hint_entries(data, 1);
});
