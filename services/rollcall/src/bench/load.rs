//! The load generator: concurrent workers over keep-alive connections, each timing every
//! operation; percentiles over all of them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Latencies and errors of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    /// Operations per second.
    pub throughput_per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Operations that failed.
    pub errors: u64,
    /// Operations that succeeded.
    pub operations: u64,
    /// Wall time of the run in seconds.
    pub seconds: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Summarizes latencies (milliseconds) over a wall time.
pub fn summarize(mut latencies: Vec<f64>, errors: u64, seconds: f64) -> Measured {
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Measured {
        throughput_per_s: latencies.len() as f64 / seconds.max(1e-9),
        p50_ms: percentile(&latencies, 50.0),
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        errors,
        operations: latencies.len() as u64,
        seconds,
    }
}

/// Runs `operation(worker, n)` from `concurrency` workers until `total` operations are done or
/// `duration` has passed, whichever comes first. An operation returns whether it succeeded.
pub async fn drive<F, Fut>(
    concurrency: usize,
    total: u64,
    duration: Duration,
    operation: F,
) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let operation = Arc::new(operation);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (operation, next, errors) = (operation.clone(), next.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() >= deadline {
                    return latencies;
                }
                let begun = Instant::now();
                if operation(worker, n).await {
                    latencies.push(begun.elapsed().as_secs_f64() * 1_000.0);
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut latencies = Vec::new();
    for worker in workers {
        latencies.extend(worker.await.unwrap_or_default());
    }
    summarize(
        latencies,
        errors.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_sorted_latencies() {
        let measured = summarize((1..=100).map(f64::from).collect(), 2, 2.0);
        assert_eq!(
            (
                measured.p50_ms,
                measured.p90_ms,
                measured.p99_ms,
                measured.max_ms
            ),
            (51.0, 90.0, 99.0, 100.0)
        );
        assert_eq!((measured.throughput_per_s, measured.errors), (50.0, 2));
    }

    #[tokio::test]
    async fn drive_stops_at_the_total_and_counts_errors() {
        let measured = drive(
            4,
            10,
            Duration::from_secs(10),
            |_, n| async move { n % 5 != 0 },
        )
        .await;
        assert_eq!((measured.operations, measured.errors), (8, 2));
    }
}
