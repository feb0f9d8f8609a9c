//! The Prometheus recorder and the `/metrics` HTTP endpoint that serves it.
//!
//! [`install`] makes the process-wide recorder (once; a second call returns the
//! same handle); [`MetricsServer::start`] serves its text exposition format
//! (version 0.0.4) on a bound listener until dropped. Histograms are drained
//! into their buckets before every scrape and every [`UPKEEP_EVERY`], so memory
//! stays bounded when nobody scrapes.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{BATCH_BUCKETS, LATENCY_BUCKETS, PROPOSER_BATCH_SIZE};
use crate::error::Error;

/// How often histograms are drained when nobody scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder and describes every metric;
/// later calls return the same handle.
pub fn install() -> Result<PrometheusHandle, Error> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let bad = |e: metrics_exporter_prometheus::BuildError| Error::Internal(format!("metrics recorder: {e}"));
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(bad)?
        .set_buckets_for_metric(Matcher::Full(PROPOSER_BATCH_SIZE.into()), BATCH_BUCKETS)
        .map_err(bad)?
        .install_recorder()
        .map_err(bad)?;
    super::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// `/metrics` served over HTTP in a background task; dropping it stops serving.
pub struct MetricsServer {
    /// The address it serves on.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

impl MetricsServer {
    /// Installs the recorder (if not yet) and serves `/metrics` on `listener`.
    pub fn start(listener: TcpListener) -> Result<MetricsServer, Error> {
        let addr = listener.local_addr().map_err(|e| Error::Internal(format!("metrics listener: {e}")))?;
        let handle = install()?;
        let scrape = handle.clone();
        let app = axum::Router::new().route("/metrics", get(move || render(scrape.clone())));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(%err, "the /metrics server stopped");
            }
        });
        let upkeep = tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
        Ok(MetricsServer { addr, task, upkeep })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
        self.upkeep.abort();
    }
}

async fn render(handle: PrometheusHandle) -> impl IntoResponse {
    handle.run_upkeep();
    (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], handle.render())
}
