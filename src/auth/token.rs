//! Tokens: 32 random bytes, written `rkv_` and 64 hex digits. A node keeps only
//! their blake3 hashes: a token has 256 bits of entropy, so a fast hash is as safe
//! as a slow one and costs nothing per connection.

/// What every token starts with (so a leaked one is easy to find in logs and
/// repositories).
pub const PREFIX: &str = "rkv_";

/// Longest token accepted on the wire (ours are 68 bytes; room for other formats).
pub const MAX_TOKEN_BYTES: usize = 512;

/// A new random token, from the operating system's generator.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{PREFIX}{}", hex(&bytes))
}

/// The hash an auth file holds for `token`.
pub fn hash(token: &[u8]) -> [u8; 32] {
    *blake3::hash(token).as_bytes()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The 32 bytes of 64 hex digits, `None` if `s` is anything else.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_their_hashes_round_trip_through_hex() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64, "{a}");
        let h = hash(a.as_bytes());
        assert_eq!(parse_hash(&hex(&h)), Some(h));
        assert_eq!(parse_hash("00"), None);
        assert_eq!(parse_hash(&"g".repeat(64)), None);
        assert_eq!(parse_hash(&"é".repeat(32)), None);
    }
}
