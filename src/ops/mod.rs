//! Operations: metrics, health checks and probes, logs and the audit trail, saved usage, the
//! periodic maintenance task, and webhook notifications.

pub mod audit;
pub mod health;
pub mod key_sync;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod probes;
pub mod usage_state;
