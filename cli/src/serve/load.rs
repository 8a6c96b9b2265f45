//! `muddit bench --serve URL`: a running `muddit serve` under load. At each concurrency, that
//! many clients send generation requests back to back until `requests` are answered; the
//! images per second and the latency percentiles are reported.

use anyhow::{bail, ensure, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to send and how much.
pub struct Load {
    /// `http://host:port`
    pub url: String,
    pub concurrency: Vec<usize>,
    pub requests: usize,
    /// The JSON body of each request.
    pub body: serde_json::Value,
    /// Images each request asks for.
    pub images: usize,
}

/// One concurrency level's results.
pub struct Measured {
    pub concurrency: usize,
    pub requests: usize,
    pub images_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub wall_s: f64,
}

impl Measured {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "concurrency": self.concurrency, "requests": self.requests,
            "images_per_s": self.images_per_s, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "wall_s": self.wall_s,
        })
    }
}

/// `host:port` of an `http://` URL.
fn authority(url: &str) -> Result<String> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--serve {url}: expected http://HOST:PORT");
    };
    Ok(rest.trim_end_matches('/').to_string())
}

/// One POST of `body` on a new connection; fails on any status but 200.
async fn post(authority: &str, body: Bytes) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post("/v1/images/generations")
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let answer = response.into_body().collect().await?.to_bytes();
    ensure!(
        status.is_success(),
        "{status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// `requests` requests from `clients` clients at once: the latency of each, and the wall time.
async fn level(
    authority: &str,
    body: Bytes,
    clients: usize,
    requests: usize,
) -> Result<(Vec<Duration>, Duration)> {
    let left = Arc::new(AtomicUsize::new(requests));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (authority, body, left) = (authority.to_string(), body.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let sent = Instant::now();
                post(&authority, body.clone()).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((latencies, start.elapsed()))
}

/// The `q` quantile (nearest rank) of sorted `values`, in ms.
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// Runs every concurrency level after two warm-up requests.
pub fn run(load: &Load) -> Result<Vec<Measured>> {
    ensure!(load.requests >= 1, "--requests must be at least 1");
    ensure!(
        load.concurrency.iter().all(|&c| c >= 1),
        "--concurrency: each level at least 1"
    );
    let authority = authority(&load.url)?;
    let body = Bytes::from(serde_json::to_vec(&load.body)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        level(&authority, body.clone(), 1, 2).await?;
        let mut results = Vec::new();
        for &clients in &load.concurrency {
            let (mut latencies, wall) =
                level(&authority, body.clone(), clients, load.requests).await?;
            latencies.sort();
            results.push(Measured {
                concurrency: clients,
                requests: load.requests,
                images_per_s: (load.requests * load.images) as f64 / wall.as_secs_f64(),
                p50_ms: quantile_ms(&latencies, 0.5),
                p99_ms: quantile_ms(&latencies, 0.99),
                wall_s: wall.as_secs_f64(),
            });
        }
        Ok(results)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_ranks() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&ms, 0.5), 50.0);
        assert_eq!(quantile_ms(&ms, 0.99), 99.0);
        assert_eq!(quantile_ms(&ms[..1], 0.99), 1.0);
    }
}
