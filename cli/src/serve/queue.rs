//! The bounded queue between the HTTP handlers and the one worker that owns the model.
//!
//! Handlers `push` jobs (refused when `capacity` requests already wait) and await their reply
//! on a oneshot channel. The worker takes the oldest job and, for text-to-image, every other
//! waiting job it can share a model batch with (`T2iJob::batches_with`), up to `max_images`
//! images, and while the merged run passes the memory check each job passed alone
//! (`Queue::fits_batch`). A job whose handler is gone (the client disconnected, or its
//! timeout passed) has a closed reply channel: it is dropped from the queue unrun and counted
//! as cancelled.

use super::error::ApiError;
use crate::edit::{EditRecord, PlannedEdit};
use muddit_engine::pipeline::{ImageToText, TextToImage};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The memory check a request passed alone (`ModelShape::check_text_to_image`), true when a
/// run of the request given fits; asked again of a batch before it grows.
pub type Fits = Arc<dyn Fn(&TextToImage) -> bool + Send + Sync>;

/// One text-to-image request: one prompt, `images_per_prompt` images.
pub struct T2iJob {
    pub request: TextToImage,
    /// The guidance scale as asked (stored in the PNGs).
    pub cfg: f32,
    /// The seed the client gave. With sampled draws such a job runs alone, so its images are
    /// those of `muddit t2i --seed` with the same parameters.
    pub seed: Option<u64>,
    /// An edit's checked inputs (`/v1/images/edits`), encoded by the worker; such a job runs
    /// alone.
    pub edit: Option<Box<ServedEdit>>,
}

/// An edit of the server: its inputs checked and decoded, and what its PNGs record.
pub struct ServedEdit {
    pub planned: PlannedEdit,
    pub record: EditRecord,
}

impl T2iJob {
    /// Images this job asks for.
    pub fn images(&self) -> usize {
        self.request.prompts.len() * self.request.images_per_prompt
    }

    /// Whether the job must run in a batch of its own: a given seed under sampled draws (the
    /// draws depend on the seed and the row), or an edit (its own start ids).
    pub fn solo(&self) -> bool {
        let seeded =
            self.seed.is_some() && self.request.sampler.draw == muddit_sampler::DrawRule::Sample;
        seeded || self.edit.is_some()
    }

    /// Whether both jobs can run as one model batch: the same size, negative prompt and sampler
    /// settings (steps, guidance, schedule, temperature, draw rule) up to the seed, which the
    /// batch shares.
    pub fn batches_with(&self, other: &T2iJob) -> bool {
        let (a, b) = (&self.request, &other.request);
        let mut sampler = a.sampler;
        sampler.seed = b.sampler.seed;
        !self.solo()
            && !other.solo()
            && (a.width, a.height) == (b.width, b.height)
            && a.negative_prompt == b.negative_prompt
            && sampler == b.sampler
    }
}

pub enum Work {
    T2i(T2iJob),
    I2t(ImageToText),
}

pub enum Output {
    /// PNG files with their parameters, and the seed of the batch.
    Images {
        pngs: Vec<Vec<u8>>,
        seed: u64,
    },
    Text(String),
}

/// A finished job.
pub struct Done {
    pub output: Output,
    pub queue_wait: Duration,
    pub run: Duration,
    /// Images in the model batch the job ran in (its own and those it shared the batch with).
    pub batch_images: usize,
}

pub type Reply = oneshot::Sender<Result<Done, ApiError>>;

pub struct Job {
    pub work: Work,
    pub enqueued: Instant,
    pub reply: Reply,
}

impl Job {
    pub fn new(work: Work, reply: Reply) -> Self {
        Job {
            work,
            enqueued: Instant::now(),
            reply,
        }
    }

    fn cancelled(&self) -> bool {
        self.reply.is_closed()
    }
}

pub enum PushError {
    Full,
    Closed,
}

pub struct Queue {
    inner: Mutex<Inner>,
    ready: Condvar,
    pub capacity: usize,
    /// The served model's memory check of a run.
    fits: Fits,
}

struct Inner {
    jobs: VecDeque<Job>,
    open: bool,
    cancelled: u64,
}

impl Inner {
    /// Drops the jobs nobody waits for any more.
    fn drop_cancelled(&mut self) {
        let before = self.jobs.len();
        self.jobs.retain(|j| !j.cancelled());
        self.cancelled += (before - self.jobs.len()) as u64;
    }
}

impl Queue {
    pub fn new(capacity: usize, fits: Fits) -> Self {
        Queue {
            fits,
            inner: Mutex::new(Inner {
                jobs: VecDeque::new(),
                open: true,
                cancelled: 0,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    /// Whether a batch of `images` images of `head`'s size and settings passes the memory
    /// check (the estimate depends on the count, not on which prompts).
    fn fits_batch(&self, head: &T2iJob, images: usize) -> bool {
        let mut request = head.request.clone();
        request.prompts.truncate(1);
        request.images_per_prompt = images;
        (self.fits)(&request)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only a consistent VecDeque behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, job: Job) -> Result<(), PushError> {
        let mut inner = self.lock();
        if !inner.open {
            return Err(PushError::Closed);
        }
        inner.drop_cancelled();
        if inner.jobs.len() >= self.capacity {
            return Err(PushError::Full);
        }
        inner.jobs.push_back(job);
        self.ready.notify_one();
        Ok(())
    }

    /// Jobs waiting, and jobs cancelled so far.
    pub fn depth_and_cancelled(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.jobs.len(), inner.cancelled)
    }

    /// Refuses new jobs; the worker still runs those waiting, then `next_batch` gives None.
    pub fn close(&self) {
        self.lock().open = false;
        self.ready.notify_all();
    }

    /// Blocks until work waits: the oldest job and, for text-to-image, every later job that
    /// batches with it, while the batch stays within `max_images` images and its memory check.
    /// None once closed and empty.
    pub fn next_batch(&self, max_images: usize) -> Option<Vec<Job>> {
        let mut inner = self.lock();
        loop {
            inner.drop_cancelled();
            if !inner.jobs.is_empty() {
                break;
            }
            if !inner.open {
                return None;
            }
            inner = self.ready.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        let first = inner.jobs.pop_front()?;
        let Work::T2i(head) = &first.work else {
            return Some(vec![first]);
        };
        let mut images = head.images();
        let mut rest = VecDeque::new();
        let mut batch = Vec::new();
        while let Some(job) = inner.jobs.pop_front() {
            match &job.work {
                Work::T2i(t)
                    if t.batches_with(head)
                        && images + t.images() <= max_images
                        && self.fits_batch(head, images + t.images()) =>
                {
                    images += t.images();
                    batch.push(job);
                }
                _ => rest.push_back(job),
            }
        }
        inner.jobs = rest;
        batch.insert(0, first);
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muddit_sampler::{DrawRule, SamplerConfig};

    /// A queue whose memory check passes every run.
    fn queue(capacity: usize) -> Queue {
        Queue::new(capacity, Arc::new(|_| true))
    }

    fn t2i(prompt: &str, n: usize, width: usize, seed: Option<u64>) -> Work {
        let mut sampler = SamplerConfig::new(16);
        sampler.seed = seed.unwrap_or(0);
        sampler.draw = DrawRule::Sample;
        Work::T2i(T2iJob {
            request: TextToImage {
                prompts: vec![prompt.into()],
                negative_prompt: String::new(),
                images_per_prompt: n,
                width,
                height: 64,
                sampler,
                edit: None,
            },
            cfg: 1.0,
            seed,
            edit: None,
        })
    }

    fn push(queue: &Queue, work: Work) -> oneshot::Receiver<Result<Done, ApiError>> {
        let (tx, rx) = oneshot::channel();
        assert!(queue.push(Job::new(work, tx)).is_ok());
        rx
    }

    fn prompts(batch: &[Job]) -> Vec<String> {
        batch
            .iter()
            .map(|j| match &j.work {
                Work::T2i(t) => t.request.prompts[0].clone(),
                Work::I2t(_) => "i2t".into(),
            })
            .collect()
    }

    #[test]
    fn compatible_jobs_batch_up_to_the_image_limit_in_order() {
        let queue = queue(16);
        let _r: Vec<_> = [
            t2i("a", 2, 64, None),
            t2i("other size", 1, 128, None),
            t2i("b", 1, 64, None),
            t2i("seeded", 1, 64, Some(5)),
            t2i("too many", 2, 64, None),
            t2i("c", 1, 64, None),
        ]
        .into_iter()
        .map(|w| push(&queue, w))
        .collect();
        let first = queue.next_batch(4).expect("a batch");
        assert_eq!(prompts(&first), ["a", "b", "c"]);
        let next = queue.next_batch(4).expect("a batch");
        assert_eq!(prompts(&next), ["other size"]);
        assert_eq!(prompts(&queue.next_batch(4).expect("a batch")), ["seeded"]);
        assert_eq!(
            prompts(&queue.next_batch(4).expect("a batch")),
            ["too many"]
        );
        queue.close();
        assert!(queue.next_batch(4).is_none());
    }

    #[test]
    fn a_batch_grows_only_while_its_merged_run_fits_in_memory() {
        // Memory for 3 images of this size, whatever the batch limit.
        let three: Fits = Arc::new(|r: &TextToImage| r.prompts.len() * r.images_per_prompt <= 3);
        let queue = Queue::new(16, three);
        let _r: Vec<_> = [("a", 2), ("b", 2), ("c", 1)]
            .into_iter()
            .map(|(p, n)| push(&queue, t2i(p, n, 64, None)))
            .collect();
        assert_eq!(prompts(&queue.next_batch(8).expect("a batch")), ["a", "c"]);
        assert_eq!(prompts(&queue.next_batch(8).expect("a batch")), ["b"]);
    }

    #[test]
    fn a_full_queue_refuses_and_cancelled_jobs_free_their_place() {
        let queue = queue(2);
        let kept = push(&queue, t2i("kept", 1, 64, None));
        let gone = push(&queue, t2i("gone", 1, 64, None));
        let (tx, _rx) = oneshot::channel();
        assert!(matches!(
            queue.push(Job::new(t2i("refused", 1, 64, None), tx)),
            Err(PushError::Full)
        ));
        drop(gone);
        let _later = push(&queue, t2i("later", 1, 64, None));
        assert_eq!(queue.depth_and_cancelled(), (2, 1));
        assert_eq!(
            prompts(&queue.next_batch(8).expect("a batch")),
            ["kept", "later"]
        );
        drop(kept);
    }
}
