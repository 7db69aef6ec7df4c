//! The on-disk record: one atomic batch of puts and deletes.
//!
//! ```text
//! header  u32 LE body length | u32 LE crc32 of the segment's salt and the body
//! body    u8 format (1) | u64 LE sequence number | u16 LE op count | ops
//! op      u8 space | u8 kind (0 put, 1 delete) | u32 LE key length | u32 LE value length
//!         | key | value (empty for a delete)
//! ```
//!
//! A record is applied whole or not at all: recovery never applies a record whose
//! length or checksum does not hold (it skips to the next whole one, or cuts a torn
//! append at the end of the last segment), so an object and its Merkle leaf,
//! written in one batch, never come back one without the other.

use super::Space;

/// Version byte of the record body.
pub(crate) const FORMAT: u8 = 1;
/// Bytes before the body.
pub(crate) const HEADER_LEN: usize = 8;
/// Bytes of the body before the first op.
pub(crate) const BODY_PREFIX_LEN: usize = 1 + 8 + 2;
/// Bytes of an op before its key.
const OP_PREFIX_LEN: usize = 1 + 1 + 4 + 4;
/// Largest body accepted (a bound on what recovery allocates for one record).
pub(crate) const MAX_BODY_LEN: usize = 1 << 30;
/// Most ops in one record (the count is a u16).
pub(crate) const MAX_OPS: usize = u16::MAX as usize;

/// One change of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) space: Space,
    pub(crate) key: Vec<u8>,
    /// `None` deletes the key.
    pub(crate) value: Option<Vec<u8>>,
}

/// Where an op's value sits inside an encoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ValueAt {
    /// Offset from the start of the record (header included).
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

/// Encodes `ops` as a record with sequence number 0 (patched by [`seal`] under the
/// writer's lock, so the expensive part runs outside it). Returns the record and,
/// per op, where its value lies.
///
/// # Panics
/// If the batch is empty, holds more than [`MAX_OPS`] ops, or a key or value does
/// not fit the format: callers bound keys and values far below that.
pub(crate) fn encode(ops: &[Op]) -> (Vec<u8>, Vec<ValueAt>) {
    assert!(
        !ops.is_empty() && ops.len() <= MAX_OPS,
        "batch of {} ops",
        ops.len()
    );
    let size: usize = HEADER_LEN
        + BODY_PREFIX_LEN
        + ops
            .iter()
            .map(|op| OP_PREFIX_LEN + op.key.len() + op.value.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    assert!(size - HEADER_LEN <= MAX_BODY_LEN, "record of {size} bytes");
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.push(FORMAT);
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    let mut at = Vec::with_capacity(ops.len());
    for op in ops {
        let value = op.value.as_deref().unwrap_or(&[]);
        out.push(op.space as u8);
        out.push(u8::from(op.value.is_none()));
        out.extend_from_slice(&(op.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&op.key);
        at.push(ValueAt {
            offset: out.len() as u32,
            len: value.len() as u32,
        });
        out.extend_from_slice(value);
    }
    debug_assert_eq!(out.len(), size);
    (out, at)
}

/// A segment's random salt, mixed into every record checksum of it (segments of
/// format 1 have none). Bytes a client stored inside a value can hold a whole
/// record, checksum included: without the salt, recovery skipping damage could take
/// it for a real one and apply whatever it says.
pub(crate) type Salt = Option<[u8; 8]>;

fn checksum(salt: &Salt, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    if let Some(salt) = salt {
        h.update(salt);
    }
    h.update(body);
    h.finalize()
}

/// Writes the sequence number, body length and checksum into an encoded record.
pub(crate) fn seal(record: &mut [u8], seq: u64, salt: &Salt) {
    record[HEADER_LEN + 1..HEADER_LEN + 9].copy_from_slice(&seq.to_le_bytes());
    let body_len = (record.len() - HEADER_LEN) as u32;
    let crc = checksum(salt, &record[HEADER_LEN..]);
    record[..4].copy_from_slice(&body_len.to_le_bytes());
    record[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// An op as decoded from a record (borrowing the record's bytes).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodedOp<'a> {
    pub(crate) space: Space,
    pub(crate) key: &'a [u8],
    /// `None` for a delete.
    pub(crate) value: Option<&'a [u8]>,
    /// Offset of the value from the start of the record.
    pub(crate) value_offset: u32,
}

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Fewer bytes than the header or body announce (a torn append).
    Short,
    /// The body's checksum does not match.
    Checksum,
    /// A well-checksummed body that does not parse (a format this build does not read).
    Malformed(&'static str),
}

/// Body length announced by a header.
pub(crate) fn body_len(header: &[u8; HEADER_LEN]) -> usize {
    u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize
}

/// Checks and decodes a whole record (header and body) of a segment with `salt`.
/// Never panics on any input.
pub(crate) fn decode<'a>(
    record: &'a [u8],
    salt: &Salt,
) -> Result<(u64, Vec<DecodedOp<'a>>), Invalid> {
    let header: &[u8; HEADER_LEN] = record
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(Invalid::Short)?;
    let len = body_len(header);
    let body = record
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(Invalid::Short)?;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if checksum(salt, body) != crc {
        return Err(Invalid::Checksum);
    }
    let mut r = Reader { buf: body, pos: 0 };
    if r.u8()? != FORMAT {
        return Err(Invalid::Malformed("unknown record format"));
    }
    let seq = r.u64()?;
    let count = r.u16()? as usize;
    let mut ops = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let space = Space::from_byte(r.u8()?).ok_or(Invalid::Malformed("unknown space"))?;
        let delete = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(Invalid::Malformed("unknown op kind")),
        };
        let klen = r.u32()? as usize;
        let vlen = r.u32()? as usize;
        if delete && vlen != 0 {
            return Err(Invalid::Malformed("delete with a value"));
        }
        let key = r.take(klen)?;
        let value_offset = (HEADER_LEN + r.pos) as u32;
        let value = r.take(vlen)?;
        ops.push(DecodedOp {
            space,
            key,
            value: (!delete).then_some(value),
            value_offset,
        });
    }
    if r.pos != body.len() {
        return Err(Invalid::Malformed("trailing bytes"));
    }
    Ok((seq, ops))
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Invalid> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Invalid::Malformed("length overflow"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(Invalid::Malformed("op runs past the body"))?;
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, Invalid> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Invalid> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Invalid> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Invalid> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SALT: Salt = Some(*b"saltsalt");

    fn op(space: Space, key: &[u8], value: Option<&[u8]>) -> Op {
        Op {
            space,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn round_trips_and_locates_values() {
        let ops = vec![
            op(Space::Objects, b"k1", Some(b"value one")),
            op(Space::Merkle, b"leaf", Some(&[7u8; 32])),
            op(Space::Hints, b"gone", None),
        ];
        let (mut rec, at) = encode(&ops);
        seal(&mut rec, 42, &SALT);
        let (seq, decoded) = decode(&rec, &SALT).expect("decodes");
        assert_eq!(seq, 42);
        assert_eq!(decoded.len(), 3);
        for ((d, o), a) in decoded.iter().zip(&ops).zip(&at) {
            assert_eq!(d.space, o.space);
            assert_eq!(d.key, &o.key[..]);
            assert_eq!(d.value, o.value.as_deref());
            assert_eq!(d.value_offset, a.offset);
            let stored = &rec[a.offset as usize..(a.offset + a.len) as usize];
            assert_eq!(stored, o.value.as_deref().unwrap_or(&[]));
        }
    }

    #[test]
    fn torn_and_flipped_records_are_refused() {
        let (mut rec, _) = encode(&[op(Space::Objects, b"k", Some(b"v"))]);
        seal(&mut rec, 1, &SALT);
        for cut in 0..rec.len() {
            assert_eq!(
                decode(&rec[..cut], &SALT),
                Err(Invalid::Short),
                "cut at {cut}"
            );
        }
        for i in HEADER_LEN..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad, &SALT), Err(Invalid::Checksum), "flip at {i}");
        }
        // Under another segment's salt (or none) the same bytes are no record.
        assert_eq!(decode(&rec, &Some([9; 8])), Err(Invalid::Checksum));
        assert_eq!(decode(&rec, &None), Err(Invalid::Checksum));
        let (mut old, _) = encode(&[op(Space::Objects, b"k", Some(b"v"))]);
        seal(&mut old, 1, &None);
        assert!(decode(&old, &None).is_ok(), "format 1 segments still read");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, &SALT);
            let _ = decode(&bytes, &None);
        }

        #[test]
        fn well_checksummed_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut rec = Vec::new();
            rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
            rec.extend_from_slice(&checksum(&SALT, &body).to_le_bytes());
            rec.extend_from_slice(&body);
            let _ = decode(&rec, &SALT);
        }

        #[test]
        fn any_batch_round_trips(
            batch in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(any::<u8>(), 0..40),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100))),
                1..20),
            seq in any::<u64>(),
        ) {
            let ops: Vec<Op> = batch
                .into_iter()
                .map(|(s, k, v)| Op { space: Space::from_byte(s).expect("space"), key: k, value: v })
                .collect();
            let (mut rec, _) = encode(&ops);
            seal(&mut rec, seq, &SALT);
            let (got_seq, decoded) = decode(&rec, &SALT).expect("decodes");
            prop_assert_eq!(got_seq, seq);
            let back: Vec<Op> = decoded
                .iter()
                .map(|d| Op { space: d.space, key: d.key.to_vec(), value: d.value.map(<[u8]>::to_vec) })
                .collect();
            prop_assert_eq!(back, ops);
        }
    }
}
