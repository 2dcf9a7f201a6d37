//! keygate: an API-key gateway for self-hosted, OpenAI-compatible inference servers.
#![forbid(unsafe_code)]

pub mod account;
pub mod admin;
pub mod auth;
pub mod authorize;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod keys;
pub mod limit;
pub mod mock;
pub mod ops;
pub mod pipeline;
pub mod proxy;
pub mod server;
pub mod text;
pub mod time;
pub mod watch;
