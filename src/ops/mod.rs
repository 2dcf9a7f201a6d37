//! Operations: metrics, health checks, logs, saved usage, periodic maintenance.

pub mod health;
pub mod logging;
pub mod maintenance;
pub mod metrics;
pub mod usage_state;
