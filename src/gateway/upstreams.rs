//! Upstreams built from the configuration, each reusing the connection pool of an unchanged
//! one so a reload does not drop warm connections.

use crate::config::Config;
use crate::ops::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use std::sync::Arc;

/// Builds upstreams, reusing connection pools of unchanged ones.
pub(super) fn build_upstreams(
    config: &Config,
    prev: &[Arc<Upstream>],
    metrics: &Metrics,
) -> Arc<[Arc<Upstream>]> {
    config
        .upstreams
        .iter()
        .map(|u| {
            let reused = prev.iter().find(|p| p.same_pool(u));
            let series = metrics.upstream(&u.name, u.health.is_some());
            Arc::new(match reused {
                Some(p) => p.with_config(u.clone(), series),
                None => Upstream::new(u.clone(), series),
            })
        })
        .collect()
}
