//! ringkv: a leaderless, eventually consistent, Dynamo-style key-value store.

pub mod object;
pub mod net;
