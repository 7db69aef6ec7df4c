//! ringkv-simulation: seeded, replayable simulation of ringkv (DESIGN.md §9).
//!
//! Built so far: [`net`], the transport seam on turmoil, so real ringkv nodes and
//! clients run on a simulated network; and [`gossip_scale`], the membership state
//! machine of `ringkv-gossip` with up to thousands of members on a deterministic
//! event queue (no sockets, no clock), measuring detection and dissemination.

pub mod chaos;
pub mod gossip_scale;
pub mod host;
pub mod net;

pub use net::SimNetwork;
