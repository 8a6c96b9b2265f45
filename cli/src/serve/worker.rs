//! The one thread that owns the model: takes batches from the queue, runs them, answers each
//! job on its reply channel.

use super::error::ApiError;
use super::metrics::Metrics;
use super::queue::{Done, Job, Output, Queue, Reply, T2iJob, Work};
use crate::generate::{generation_params, rgb8, ModelRecord};
use crate::model::Models;
use crate::png_meta::{encode_png, GenerationParams};
use anyhow::Result;
use muddit_engine::cancel;
use muddit_engine::pipeline::{ImageToText, StepEvent, TextToImage};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Worker {
    pub models: Models,
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
    /// What the PNGs store about the model (as `muddit t2i`).
    pub model: ModelRecord,
}

impl Worker {
    /// Runs batches until the queue is closed and empty.
    pub fn run(mut self) {
        while let Some(batch) = self.queue.next_batch(self.max_batch) {
            self.run_batch(batch);
        }
    }

    fn run_batch(&mut self, jobs: Vec<Job>) {
        let start = Instant::now();
        let waits: Vec<_> = jobs.iter().map(|j| start - j.enqueued).collect();
        let (works, replies): (Vec<Work>, Vec<_>) =
            jobs.into_iter().map(|j| (j.work, j.reply)).unzip();
        let ran = run_while_awaited(&replies, || self.run_works(works));
        let (outputs, images) = match ran {
            Ok(done) => done,
            // Nobody to answer: each handler has logged and counted its request.
            Err(e) if is_cancelled(&e) => return,
            Err(e) => {
                let e = ApiError::from(e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let run = start.elapsed();
        self.metrics.batch(images, run, waits.iter().sum());
        for ((reply, output), queue_wait) in replies.into_iter().zip(outputs).zip(waits) {
            let _ = reply.send(Ok(Done {
                output,
                queue_wait,
                run,
                batch_images: images,
            }));
        }
    }

    /// The outputs of one batch, one per job, and the images generated.
    fn run_works(&mut self, works: Vec<Work>) -> Result<(Vec<Output>, usize)> {
        let mut t2i = Vec::new();
        for work in works {
            match work {
                Work::I2t(request) => return Ok((vec![self.image_to_text(&request)?], 0)),
                Work::T2i(job) => t2i.push(job),
            }
        }
        let outputs = self.text_to_image(&t2i)?;
        let images = t2i.iter().map(T2iJob::images).sum();
        Ok((outputs, images))
    }

    fn on_step(metrics: &Metrics) -> impl FnMut(StepEvent) + '_ {
        |e| {
            metrics.stage("transformer", e.transformer);
            metrics.stage("sampler", e.sampler);
        }
    }

    /// Runs `jobs` as one model batch; one output per job, its images as PNGs.
    fn text_to_image(&self, jobs: &[T2iJob]) -> Result<Vec<Output>> {
        let mut request = merged_request(jobs);
        // An edit runs alone (`T2iJob::solo`): its input encoded onto the canvas.
        let edit = match &jobs[0].edit {
            Some(e) => Some(e.planned.encode(&self.models, e.record.clone())?),
            None => None,
        };
        request.edit = edit.as_ref().map(|e| e.ids.clone());
        let mut images = self
            .models
            .text_to_image(&request, &mut Self::on_step(&self.metrics))?;
        if let Some(edit) = &edit {
            edit.paste_into(&mut images.pixels);
        }
        self.metrics.stage("text_encode", images.text_encode);
        self.metrics.stage("vq_decode", images.vq_decode);
        let (width, height) = (request.width, request.height);
        let mut index = 0;
        let mut outputs = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut pngs = Vec::with_capacity(job.images());
            for _ in 0..job.images() {
                let rgb = rgb8(&images.pixels, index, width, height);
                let params = GenerationParams {
                    edit: edit.as_ref().map(|e| e.record.clone()),
                    ..generation_params(&request, job.cfg, index, &self.model)
                };
                let mut png = Vec::new();
                encode_png(&mut png, &rgb, width as u32, height as u32, Some(&params))?;
                pngs.push(png);
                index += 1;
            }
            outputs.push(Output::Images {
                pngs,
                seed: request.sampler.seed,
            });
        }
        Ok(outputs)
    }

    fn image_to_text(&mut self, request: &ImageToText) -> Result<Output> {
        let start = Instant::now();
        let answers = self
            .models
            .image_to_text(request, &mut Self::on_step(&self.metrics))?;
        self.metrics.stage("image_to_text", start.elapsed());
        let text = answers
            .into_iter()
            .next()
            .map(|a| a.text)
            .unwrap_or_default();
        Ok(Output::Text(text))
    }
}

/// Runs `work` until it ends or no reply is awaited any more (every client left or timed out,
/// looked at every 50 ms): then the engine stops at its next step or block. A panic in the run
/// becomes an error, so the worker goes on with the next batch.
fn run_while_awaited<R>(replies: &[Reply], work: impl FnOnce() -> Result<R>) -> Result<R> {
    let stop = Arc::new(AtomicBool::new(false));
    let over = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !over.load(Ordering::Relaxed) {
                if replies.iter().all(|r| r.is_closed()) {
                    stop.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let run = std::panic::AssertUnwindSafe(|| cancel::when(stop.clone(), work));
        let ran = std::panic::catch_unwind(run);
        over.store(true, Ordering::Relaxed);
        ran.unwrap_or_else(|_| Err(anyhow::anyhow!("the model run panicked")))
    })
}

fn is_cancelled(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<muddit_engine::Error>(),
        Some(muddit_engine::Error::Cancelled)
    )
}

/// One request for the batch: a lone job as it came (so its PNGs read as `muddit t2i`'s
/// `--prompt P --batch n`), several as one prompt per image; the seed is the lone job's own,
/// else a fresh one for the batch.
fn merged_request(jobs: &[T2iJob]) -> TextToImage {
    let mut request = jobs[0].request.clone();
    if let [job] = jobs {
        request.sampler.seed = job.seed.unwrap_or_else(fresh_seed);
        return request;
    }
    request.prompts = jobs
        .iter()
        .flat_map(|j| {
            let r = &j.request;
            r.prompts
                .iter()
                .flat_map(|p| std::iter::repeat_n(p.clone(), r.images_per_prompt))
        })
        .collect();
    request.images_per_prompt = 1;
    request.sampler.seed = fresh_seed();
    request
}

/// A fresh seed mixed from the clock and a counter, below 2^53 so that JSON clients that read
/// numbers as doubles (JavaScript) get it back exactly.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 finaliser of the clock and the counter.
    let mut z = nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 11
}
