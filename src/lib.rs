//! ringkv: a leaderless, eventually consistent, Dynamo-style key-value store.
//!
//! Layers, bottom up: [`object`] (what a key holds and how replicas merge),
//! [`replica`] (atomic updates of the local store), [`coordinator`] (answering a
//! request), [`rpc`] (the wire), [`node`] (a running node), [`client`] (the Rust
//! client). Network access goes through [`net`], so the simulation can replace it.

pub mod auth;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod coordinator;
pub mod hints;
pub mod http;
pub mod net;
pub mod node;
pub mod object;
pub mod peer;
pub mod repair;
pub mod replica;
pub mod ring;
pub mod rpc;
pub mod tls;
pub mod watch;

pub use client::{Client, ClientError, Credentials, GetResult};
