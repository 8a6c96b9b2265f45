//! Counters for `GET /metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Pipeline stages whose seconds are summed.
pub const STAGES: [&str; 5] = [
    "text_encode",
    "transformer",
    "sampler",
    "vq_decode",
    "image_to_text",
];

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    /// `(route, status)` -> requests, answered or left by their client (499).
    requests: BTreeMap<(String, u16), u64>,
    images: u64,
    batches: u64,
    batch_images: u64,
    batch_seconds: f64,
    queue_wait_seconds: f64,
    stage_seconds: BTreeMap<&'static str, f64>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request(&self, route: &str, status: u16) {
        *self
            .lock()
            .requests
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// One model batch: `images` images generated (0 for image-to-text), its run time and the
    /// summed queue waits of its jobs.
    pub fn batch(&self, images: usize, run: Duration, queue_wait: Duration) {
        let mut c = self.lock();
        c.batches += 1;
        c.images += images as u64;
        c.batch_images += images as u64;
        c.batch_seconds += run.as_secs_f64();
        c.queue_wait_seconds += queue_wait.as_secs_f64();
    }

    pub fn stage(&self, stage: &'static str, time: Duration) {
        *self.lock().stage_seconds.entry(stage).or_default() += time.as_secs_f64();
    }

    /// Mean seconds of a model batch so far (1 before the first).
    pub fn mean_batch_seconds(&self) -> f64 {
        let c = self.lock();
        match c.batches {
            0 => 1.0,
            n => c.batch_seconds / n as f64,
        }
    }

    /// The Prometheus text exposition of every counter and of the queue's state.
    pub fn render(&self, queue_depth: usize, queue_capacity: usize, cancelled: u64) -> String {
        let c = self.lock();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        let requests: Vec<_> = c
            .requests
            .iter()
            .map(|((route, status), n)| {
                (
                    format!("{{route=\"{route}\",status=\"{status}\"}}"),
                    n.to_string(),
                )
            })
            .collect();
        metric(
            "muddit_requests_total",
            "counter",
            "Requests, by route and status (499: the client left before its answer).",
            &requests,
        );
        metric(
            "muddit_queue_depth",
            "gauge",
            "Requests waiting for the model.",
            &one(queue_depth.to_string()),
        );
        metric(
            "muddit_queue_capacity",
            "gauge",
            "Requests that may wait before 429.",
            &one(queue_capacity.to_string()),
        );
        metric(
            "muddit_requests_cancelled_total",
            "counter",
            "Queued requests dropped unrun (client gone or timed out).",
            &one(cancelled.to_string()),
        );
        metric(
            "muddit_images_generated_total",
            "counter",
            "Images generated.",
            &one(c.images.to_string()),
        );
        metric(
            "muddit_batches_total",
            "counter",
            "Model batches run.",
            &one(c.batches.to_string()),
        );
        metric(
            "muddit_batch_images_total",
            "counter",
            "Images over all text-to-image batches (divide by batches for the mean batch).",
            &one(c.batch_images.to_string()),
        );
        metric(
            "muddit_queue_wait_seconds_total",
            "counter",
            "Seconds jobs waited in the queue.",
            &one(c.queue_wait_seconds.to_string()),
        );
        let stages: Vec<_> = STAGES
            .iter()
            .map(|s| {
                (
                    format!("{{stage=\"{s}\"}}"),
                    c.stage_seconds.get(s).copied().unwrap_or(0.0).to_string(),
                )
            })
            .collect();
        metric(
            "muddit_stage_seconds_total",
            "counter",
            "Seconds spent per pipeline stage.",
            &stages,
        );
        out
    }
}
