//! ringkv-simulation: seeded, replayable chaos simulation of whole ringkv clusters on
//! turmoil (DESIGN.md §9).
//!
//! Not built yet: the simulation issue fills this crate. The node code it will drive
//! already reaches the network only through `ringkv::net::Network`, so a turmoil
//! implementation of that seam is all the node needs.
