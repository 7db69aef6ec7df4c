//! RPC: the client service over length-delimited postcard frames on any
//! [`crate::net::Network`] stream.

pub mod api;
pub mod codec;
pub mod guard;
pub mod server;

use std::time::Duration;

use tarpc::serde_transport::Transport;
use tokio_util::codec::LengthDelimitedCodec;

use crate::net::Stream;
use codec::PostcardCodec;

/// How much longer than its caller's deadline tarpc's own deadline on a call is.
///
/// Callers bound every call with tokio's timer, which decides when it has failed.
/// tarpc measures its deadline on the wall clock (and hands it on as a duration
/// computed from the wall clock at each hop); racing tokio's timer with it would
/// make outcomes depend on real elapsed microseconds, which under virtual time (the
/// simulation) made runs nondeterministic. Later by this much, it only lets the
/// server drop work nobody waits for any more.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(5);

/// A tarpc context for a call its caller bounds by `timeout` on tokio's timer.
///
/// The deadline is whole seconds plus half a second away: tarpc sends it as the
/// time left, measured on the wall clock when the frame is encoded, and its postcard
/// encoding then has the same length whatever microseconds passed (the sub-second
/// part stays between 2^28 ns and 10^9 ns). Frames whose length wobbled with the
/// wall clock were batched differently into simulated TCP segments.
pub fn context(timeout: Duration) -> tarpc::context::Context {
    let whole = Duration::from_secs(timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0));
    let mut ctx = tarpc::context::current();
    ctx.deadline = std::time::Instant::now() + whole + DEADLINE_SLACK + Duration::from_millis(500);
    ctx
}

/// Frames every message of one connection with a hard size limit; one frame per
/// write if `write_per_frame` (see [`crate::net::Network::write_per_frame`]).
pub fn framed<S: Stream, In, Out>(
    stream: S,
    max_frame_bytes: usize,
    write_per_frame: bool,
) -> Transport<S, In, Out, PostcardCodec<In, Out>>
where
    In: codec::Incoming,
    Out: serde::Serialize,
{
    let mut framed = LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_framed(stream);
    if write_per_frame {
        framed.set_backpressure_boundary(1);
    }
    tarpc::serde_transport::new(framed, PostcardCodec::default())
}
