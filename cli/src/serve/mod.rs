//! `muddit serve`: the model loaded once, an HTTP API in front (OpenAI's images API shape,
//! captions, VQA, health, models, Prometheus metrics and a small page at `/`).
//!
//! Threads: tokio's (HTTP), its blocking pool (parsing, image decoding, checks, PNG base64) and
//! one worker that owns the model
//! (`worker.rs`), fed through a bounded queue (`queue.rs`) that batches compatible requests.
//! SIGINT or SIGTERM stops accepting connections, lets the requests in flight finish for at
//! most `--shutdown-grace` seconds, and exits 0.

mod api;
mod error;
pub mod load;
mod metrics;
mod queue;
mod validate;
mod worker;

use crate::Global;
use anyhow::{ensure, Context, Result};
use clap::Args;
use muddit_engine::limits::ModelShape;
use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most images in one model batch: compatible waiting requests (same size, steps,
    /// guidance, draw rule) run together up to this many images; 1 turns batching off.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests that may wait for the model; one more gets 429 with `Retry-After`.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Largest request body in bytes (413 above it).
    #[arg(long, default_value_t = 16 << 20)]
    max_body: usize,
    /// Seconds a request may wait for its answer (504 after it; its work is cancelled, queued
    /// or running).
    #[arg(long, default_value_t = 300.0)]
    request_timeout: f64,
    /// Seconds the requests in flight may take to finish after SIGINT or SIGTERM.
    #[arg(long, default_value_t = 8.0)]
    shutdown_grace: f64,
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("--{flag} {value}: not a duration"))
}

/// The served model's id: its root folder's name.
fn model_id(root: &std::path::Path) -> String {
    root.file_name()
        .map_or("muddit".into(), |n| n.to_string_lossy().into_owned())
}

pub fn run(args: ServeArgs, global: &Global) -> Result<()> {
    ensure!(args.max_batch >= 1, "--max-batch must be at least 1");
    ensure!(args.queue >= 1, "--queue must be at least 1");
    let request_timeout = seconds("request-timeout", args.request_timeout)?;
    let grace = seconds("shutdown-grace", args.shutdown_grace)?;
    let root = crate::model::resolve_root(global.model.as_deref(), global.quiet)?;
    let defaults = crate::model::defaults(&root)?;
    let folder = muddit_engine::pipeline::ModelFolder::open(&root)?;
    // The weights stay loaded: the memory check of a request counts only its run.
    let shape = ModelShape::loaded(&folder.transformer_cfg, &folder.vqvae_cfg);
    let models = crate::model::Models::load(&root, global)?;
    // A batch grows only while its merged run passes the check each request passed alone.
    let batch_shape = shape.clone();
    let fits = Arc::new(move |r: &_| batch_shape.check_text_to_image(r).is_ok());
    let queue = Arc::new(queue::Queue::new(args.queue, fits));
    let metrics = Arc::new(metrics::Metrics::default());
    let worker = worker::Worker {
        models,
        queue: queue.clone(),
        metrics: metrics.clone(),
        max_batch: args.max_batch,
        model: crate::generate::ModelRecord::of(&root, global.model.as_deref())?,
    };
    let (exited, worker_exited) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("muddit-model".into())
        .spawn(move || {
            worker.run();
            let _ = exited.send(());
        })?;
    let state = Arc::new(api::AppState {
        queue: queue.clone(),
        metrics,
        folder,
        shape,
        defaults,
        model_id: model_id(&root),
        max_batch: args.max_batch,
        max_body: args.max_body,
        request_timeout,
        quiet: global.quiet,
        next_id: AtomicU64::new(0),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let answered = runtime.block_on(serve(&args, state, grace))?;
    queue.close();
    // Every request was answered, but the worker may still be in a run whose clients left
    // (they do not stop it): it gets the grace once more, then the process exits without it.
    let finished = answered && worker_exited.recv_timeout(grace).is_ok();
    runtime.shutdown_timeout(Duration::from_secs(1));
    if !global.quiet {
        eprintln!(
            "muddit serve: stopped{}",
            if finished {
                ""
            } else {
                " (a run still going after --shutdown-grace was abandoned)"
            }
        );
    }
    Ok(())
}

/// Serves until a signal, then until the requests in flight are answered or `grace` passed;
/// true when they all were.
async fn serve(args: &ServeArgs, state: Arc<api::AppState>, grace: Duration) -> Result<bool> {
    let signal = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
    let address = listener.local_addr()?;
    println!("muddit serve: listening on http://{address}");
    std::io::stdout().flush()?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let signalled = stop.clone();
    let server = axum::serve(listener, api::router(state)).with_graceful_shutdown(async move {
        signal.await;
        signalled.notify_one();
    });
    tokio::select! {
        done = server => done.context("serving")?,
        _ = async { stop.notified().await; tokio::time::sleep(grace).await } => return Ok(false),
    }
    Ok(true)
}

const STOPPING: &str =
    "muddit serve: stopping (no new connections; finishing the requests in flight)";

/// Registers SIGINT and SIGTERM now (before the address is printed, so that a signal sent as
/// soon as the server is seen stops it gracefully); the future ends at the first of them.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("registering SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("registering SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        eprintln!("{STOPPING}");
    })
}

/// Ctrl-C elsewhere.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("{STOPPING}");
    })
}
