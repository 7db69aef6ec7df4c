//! The wire format of every RPC frame: a version byte, then postcard.
//!
//! Frames are length-delimited (tokio-util) with an explicit maximum on both sides;
//! this codec turns one frame into one message and refuses anything else.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Leading byte of every RPC frame.
pub const WIRE_VERSION: u8 = 1;

/// postcard framing for tarpc's serde transport.
#[derive(Debug)]
pub struct PostcardCodec<Item, SinkItem> {
    _types: PhantomData<fn(SinkItem) -> Item>,
}

impl<Item, SinkItem> Default for PostcardCodec<Item, SinkItem> {
    fn default() -> Self {
        PostcardCodec {
            _types: PhantomData,
        }
    }
}

impl<Item, SinkItem: Serialize> tokio_serde::Serializer<SinkItem>
    for PostcardCodec<Item, SinkItem>
{
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> Result<Bytes, io::Error> {
        let mut out = Vec::with_capacity(256);
        out.push(WIRE_VERSION);
        let out = postcard::to_extend(item, out).map_err(io::Error::other)?;
        Ok(out.into())
    }
}

impl<Item: Incoming, SinkItem> tokio_serde::Deserializer<Item> for PostcardCodec<Item, SinkItem> {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Item, io::Error> {
        decode_incoming(src)
    }
}

/// What arrives in frames, with the checks serde cannot make. tarpc decodes a
/// request's deadline as `Instant::now() + duration`, which panics when the
/// duration is near `u64::MAX` seconds (found by the `client_frame` fuzz target):
/// such a frame must be refused before serde sees it.
pub trait Incoming: for<'de> Deserialize<'de> {
    /// Refuses a frame body (after the version byte) its decoder would choke on.
    ///
    /// # Errors
    /// Why the body is refused.
    fn precheck(_body: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Longest deadline a request may carry (ours carry at most a minute and slack).
pub const MAX_DEADLINE: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// A postcard varint (LEB128, at most 10 bytes) at the start of `b`, and the rest.
fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f).checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

impl<T: for<'de> Deserialize<'de>> Incoming for tarpc::ClientMessage<T> {
    fn precheck(body: &[u8]) -> Result<(), String> {
        // Variant 0 is `Request`, whose first field is the context, whose first
        // field is the deadline: a duration, seconds then nanoseconds.
        let Some((0, rest)) = varint(body) else {
            return Ok(());
        };
        let Some((secs, rest)) = varint(rest) else {
            return Ok(()); // serde refuses it
        };
        let nanos = varint(rest).map_or(0, |(n, _)| n);
        let far = std::time::Duration::from_secs(secs).checked_add(
            std::time::Duration::from_nanos(nanos.min(u64::from(u32::MAX))),
        );
        match far {
            Some(d) if d <= MAX_DEADLINE => Ok(()),
            _ => Err(format!(
                "request deadline {secs} s away, over the limit of {} s",
                MAX_DEADLINE.as_secs()
            )),
        }
    }
}

impl<T: for<'de> Deserialize<'de>> Incoming for tarpc::Response<T> {}

/// [`decode_frame`] after [`Incoming::precheck`]: how every frame read is decoded.
///
/// # Errors
/// `InvalidData` for a refused or undecodable frame.
pub fn decode_incoming<Item: Incoming>(src: &[u8]) -> Result<Item, io::Error> {
    if let Some((_, body)) = src.split_first() {
        Item::precheck(body).map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
    }
    decode_frame(src)
}

/// Decodes one frame body; never panics on bad bytes.
///
/// # Errors
/// `InvalidData` for an unknown version, undecodable bytes or trailing bytes.
pub fn decode_frame<Item: for<'de> Deserialize<'de>>(src: &[u8]) -> Result<Item, io::Error> {
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let (&version, body) = src.split_first().ok_or_else(|| bad("empty frame".into()))?;
    if version != WIRE_VERSION {
        return Err(bad(format!("unsupported wire version {version}")));
    }
    match postcard::take_from_bytes(body) {
        Ok((item, [])) => Ok(item),
        Ok((_, rest)) => Err(bad(format!("{} trailing bytes in frame", rest.len()))),
        Err(e) => Err(bad(format!("malformed frame: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Incoming for (u32, String) {}

    #[test]
    fn a_request_deadline_beyond_a_year_is_refused_before_serde_sees_it() {
        type Msg = tarpc::ClientMessage<u8>;
        // The fuzzer's input: version, Request, a deadline of u64::MAX seconds.
        let crash = [
            1u8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 6,
        ];
        let e = decode_incoming::<Msg>(&crash).expect_err("refused");
        assert!(e.to_string().contains("deadline"), "{e}");
        // A real request decodes.
        let req = tarpc::ClientMessage::Request(tarpc::Request {
            context: tarpc::context::current(),
            id: 3,
            message: 9u8,
        });
        let mut frame = vec![WIRE_VERSION];
        frame.extend(postcard::to_stdvec(&req).expect("encode"));
        match decode_incoming::<Msg>(&frame).expect("decodes") {
            tarpc::ClientMessage::Request(r) => assert_eq!((r.id, r.message), (3, 9)),
            other => panic!("{other:?}"),
        }
        assert_eq!(varint(&[0x80, 0x01]), Some((128, &[][..])));
        assert_eq!(varint(&[0xff; 11]), None);
    }
    use tokio_serde::{Deserializer, Serializer};

    #[test]
    fn round_trip_and_refusals() {
        let mut codec = PostcardCodec::<(u32, String), (u32, String)>::default();
        let bytes = Pin::new(&mut codec)
            .serialize(&(7, "x".into()))
            .expect("ser");
        assert_eq!(bytes[0], WIRE_VERSION);
        let back = Pin::new(&mut codec)
            .deserialize(&BytesMut::from(&bytes[..]))
            .expect("de");
        assert_eq!(back, (7, "x".to_string()));
        for bad in [
            &[][..],
            &[9, 1, 0][..],
            &[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(
                Pin::new(&mut codec)
                    .deserialize(&BytesMut::from(bad))
                    .is_err()
            );
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(
            Pin::new(&mut codec)
                .deserialize(&BytesMut::from(&long[..]))
                .is_err()
        );
    }
}
