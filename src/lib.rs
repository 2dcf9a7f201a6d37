//! keygate: an API-key gateway for self-hosted, OpenAI-compatible inference servers.
//!
//! A request flows through these modules, in this order:
//!
//! | stage | module | does |
//! |---|---|---|
//! | listener | [`server`], [`conn`] | HTTP/1.1 + HTTP/2, limits, connection deadlines, graceful shutdown |
//! | (pipeline) | [`gateway`] | calls the stages below in order, one error mapping |
//! | authenticate | [`authenticate`] | one credential, checksum, SHA-256 index lookup |
//! | authorize | [`authorize`], [`multipart`] | route → scope, model allowlist (multipart uploads read as they stream) |
//! | limit | [`limit`], [`cluster`] | per-key rate, token and in-flight caps (local or Redis), failed-auth guard |
//! | forward | [`forward`], [`pool`] | upstream request, header hygiene ([`headers`]), connections leased per request |
//! | account | [`account`] | usage counters, token scan, access log |
//!
//! Around them: [`key`] (token format), [`store`] (the key file), [`index`] (in-memory key
//! index), [`state`] (the one `ArcSwap` of live state), [`config`] (gateway.toml),
//! [`watch`] (reload on change), [`health`] (upstream checks for readiness), [`tls`], [`console`] (the embedded web page), [`admin`] (management API), [`metrics`], [`usage`] (saved
//! runtime state), [`mock`] (an OpenAI-compatible mock upstream), [`cli`] and [`run`]
//! (commands), [`text`] (control characters in names, on input and on terminals).
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
