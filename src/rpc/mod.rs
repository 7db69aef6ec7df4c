//! RPC: the client service over length-delimited postcard frames on any
//! [`crate::net::Network`] stream.

pub mod api;
pub mod codec;
pub mod server;

use tarpc::serde_transport::Transport;
use tokio_util::codec::LengthDelimitedCodec;

use crate::net::Stream;
use codec::PostcardCodec;

/// Frames every message of one connection with a hard size limit.
pub fn framed<S: Stream, In, Out>(
    stream: S,
    max_frame_bytes: usize,
) -> Transport<S, In, Out, PostcardCodec<In, Out>>
where
    In: for<'de> serde::Deserialize<'de>,
    Out: serde::Serialize,
{
    let framed = LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_framed(stream);
    tarpc::serde_transport::new(framed, PostcardCodec::default())
}
