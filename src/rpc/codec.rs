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

impl<Item: for<'de> Deserialize<'de>, SinkItem> tokio_serde::Deserializer<Item>
    for PostcardCodec<Item, SinkItem>
{
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Item, io::Error> {
        decode_frame(src)
    }
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
