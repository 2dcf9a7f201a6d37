//! Operations: metrics, health checks and probes, logs and the audit trail, saved usage, and
//! the periodic maintenance task.

pub mod audit;
pub mod health;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod probes;
pub mod usage_state;
