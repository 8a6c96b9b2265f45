//! The routes: one function builds the router, each handler parses and checks its request,
//! queues a job and turns the worker's answer into JSON.

use super::error::ApiError;
use super::metrics::Metrics;
use super::queue::{Done, Job, Output, PushError, Queue, T2iJob, Work};
use super::validate::{Checks, EditBody, I2tBody, Upload};
use crate::model::Defaults;
use axum::body::Bytes;
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use muddit_engine::limits::ModelShape;
use muddit_engine::pipeline::ModelFolder;
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tower_http::limit::RequestBodyLimitLayer;

pub struct AppState {
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    /// The model's configs and tokenizer (no weights), for the checks before queueing.
    pub folder: ModelFolder,
    /// Its sizes, for the shared limits (`muddit_engine::limits`).
    pub shape: ModelShape,
    pub defaults: Defaults,
    /// The served model's id (its folder's name).
    pub model_id: String,
    pub max_batch: usize,
    pub max_body: usize,
    pub request_timeout: Duration,
    /// No log line per request.
    pub quiet: bool,
    pub next_id: AtomicU64,
}

impl AppState {
    fn checks(&self) -> Checks<'_> {
        Checks {
            folder: &self.folder,
            shape: &self.shape,
            defaults: &self.defaults,
        }
    }
}

/// Queue wait and run time of a request that reached the model, for the log line.
#[derive(Clone, Copy)]
struct Timing {
    queue_wait: Duration,
    run: Duration,
    batch_images: usize,
    /// The seed of a generation's batch.
    seed: Option<u64>,
}

pub fn router(state: Arc<AppState>) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/images/generations", post(generate))
        .route("/v1/images/edits", post(edits))
        .route("/v1/captions", post(caption))
        .route("/v1/vqa", post(vqa))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let (depth, _) = state.queue.depth_and_cancelled();
    Json(serde_json::json!({
        "status": "ok", "model": state.model_id,
        "queue_depth": depth, "queue_capacity": state.queue.capacity,
    }))
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "object": "list", "data": [{
        "id": state.model_id, "object": "model", "created": 0, "owned_by": "muddit",
    }]}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let (depth, cancelled) = state.queue.depth_and_cancelled();
    let text = state.metrics.render(depth, state.queue.capacity, cancelled);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

/// How a request body comes: JSON, or a multipart form where the route reads one.
enum BodyKind {
    Json,
    Form,
}

/// Content types read as JSON: JSON's own, none, and those clients send JSON under by default
/// (`curl -d`, `fetch` with a string body).
fn is_json_type(mime: &str) -> bool {
    matches!(
        mime,
        "" | "application/json" | "text/plain" | "application/x-www-form-urlencoded"
    ) || mime.ends_with("+json")
}

/// The body's kind from its Content-Type; another type is refused (415), naming those read.
fn body_kind(headers: &HeaderMap, form_ok: bool) -> Result<BodyKind, ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = given.split(';').next().unwrap_or("").trim();
    match mime.to_ascii_lowercase().as_str() {
        "multipart/form-data" if form_ok => Ok(BodyKind::Form),
        m if is_json_type(m) => Ok(BodyKind::Json),
        _ => Err(ApiError::media_type(
            given,
            match form_ok {
                true => "application/json or multipart/form-data",
                false => "application/json",
            },
        )),
    }
}

/// `body` as `T`. It must be a JSON object: serde's derive would also take an array, filling
/// the fields by position.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::field("body", "expected a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(json_refusal)
}

/// A part of a parsed JSON object as `T`; its errors carry no line and column, as the part is
/// not the text the client sent.
fn from_object<T: DeserializeOwned>(object: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(object)).map_err(json_refusal)
}

/// A JSON refusal naming the field at fault (or `body` when the JSON itself is bad); unknown,
/// missing and repeated fields are reported at the object holding them.
fn json_refusal(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let message = e.inner().to_string();
    if !matches!(e.inner().classify(), serde_json::error::Category::Data) {
        return ApiError::field("body", format!("not JSON: {message}"));
    }
    let path = e.path().to_string();
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    match (path.as_str(), named) {
        (".", Some(name)) => ApiError::field(&name, message),
        (".", None) => ApiError::field("body", format!("{message} (expected a JSON object)")),
        _ => ApiError::field(&path, message),
    }
}

/// A JSON object with each key once (`serde_json::Map` alone keeps the last of a repeated key).
struct Object(Map<String, Value>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_map(ObjectVisitor)
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let value = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Object(object))
    }
}

/// Runs `work` on tokio's blocking threads: decoding uploads, checking them and encoding
/// answers take CPU time that would stall the runtime's two threads, and every request with
/// them.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(ApiError::internal(format!(
            "the request's work failed: {e}"
        )))
    })
}

/// Queues `work` and waits for its answer, at most the per-request timeout. Dropping this
/// future (the client went away) closes the reply channel, which cancels the queued job.
async fn submit(state: &AppState, work: Work) -> Result<Done, ApiError> {
    let (tx, rx) = oneshot::channel();
    match state.queue.push(Job::new(work, tx)) {
        Ok(()) => {}
        Err(PushError::Closed) => return Err(ApiError::stopping()),
        Err(PushError::Full) => {
            let (depth, _) = state.queue.depth_and_cancelled();
            let batches = depth.div_ceil(state.max_batch) + 1;
            let wait = state.metrics.mean_batch_seconds() * batches as f64;
            return Err(ApiError::queue_full(
                state.queue.capacity,
                wait.ceil().max(1.0) as u64,
            ));
        }
    }
    match tokio::time::timeout(state.request_timeout, rx).await {
        Err(_) => Err(ApiError::timeout(state.request_timeout.as_secs_f64())),
        Ok(Err(_)) => Err(ApiError::stopping()),
        Ok(Ok(done)) => done,
    }
}

impl Timing {
    fn of(done: &Done) -> Self {
        let seed = match &done.output {
            Output::Images { seed, .. } => Some(*seed),
            Output::Text(_) => None,
        };
        Timing {
            queue_wait: done.queue_wait,
            run: done.run,
            batch_images: done.batch_images,
            seed,
        }
    }
}

fn timed(mut response: Response, timing: Timing) -> Response {
    response.extensions_mut().insert(timing);
    response
}

async fn generate(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    body_kind(&headers, false)?;
    let checks = state.clone();
    let job = off_runtime(move || checks.checks().t2i(parse_json(&body)?)).await?;
    images_answer(&state, job).await
}

async fn edits(State(state): State<Arc<AppState>>, request: Request) -> Result<Response, ApiError> {
    let body = read_raw(&state, request).await?;
    let checks = state.clone();
    let job = off_runtime(move || {
        let body = match body {
            RawBody::Form(fields) => edit_from_form(fields)?,
            RawBody::Json(bytes) => edit_from_json(&bytes)?,
        };
        checks.checks().edit(body)
    })
    .await?;
    images_answer(&state, job).await
}

/// Runs an image job and answers with OpenAI's shape: the PNGs in base64, the batch's seed.
async fn images_answer(state: &AppState, job: T2iJob) -> Result<Response, ApiError> {
    let prompt = job.request.prompts[0].clone();
    let done = submit(state, Work::T2i(job)).await?;
    let timing = Timing::of(&done);
    let Output::Images { pngs, seed } = done.output else {
        return Err(ApiError::internal(
            "the worker answered a generation with text",
        ));
    };
    let model = state.model_id.clone();
    let response = off_runtime(move || Ok(images_json(&pngs, seed, &prompt, &model))).await?;
    Ok(timed(response, timing))
}

/// The answer of an image job: its PNGs in base64, as JSON.
fn images_json(pngs: &[Vec<u8>], seed: u64, prompt: &str, model: &str) -> Response {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: Vec<_> = pngs
        .iter()
        .map(|png| serde_json::json!({ "b64_json": b64.encode(png), "revised_prompt": prompt }))
        .collect();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Json(serde_json::json!({
        "created": created, "data": data, "model": model, "seed": seed,
    }))
    .into_response()
}

/// The file fields of a JSON edit request (base64), the edit's settings ([`EditOptions`]); the
/// other fields are the generation's.
const EDIT_FILES: [&str; 2] = ["image", "mask"];
const EDIT_OPTIONS: [&str; 4] = ["strength", "outpaint", "keep_unmasked_pixels", "mask_blur"];

fn edit_from_json(bytes: &[u8]) -> Result<EditBody, ApiError> {
    let Object(mut generation) = parse_json(bytes)?;
    let options: Map<_, _> = EDIT_OPTIONS
        .iter()
        .filter_map(|&k| generation.remove(k).map(|v| (k.to_string(), v)))
        .collect();
    let [image, mask] = EDIT_FILES.map(|k| generation.remove(k));
    let file = |name: &str, value: Option<Value>| match value {
        None => Ok(None),
        Some(Value::String(text)) => decode_base64(name, &text).map(Some),
        Some(_) => Err(ApiError::field(name, "expected a base64 string")),
    };
    Ok(EditBody {
        generation: from_object(generation)?,
        image: Upload {
            bytes: file("image", image)?.unwrap_or_default(),
            name: None,
        },
        mask: file("mask", mask)?.map(|bytes| Upload { bytes, name: None }),
        options: from_object(options)?,
    })
}

fn edit_from_form(fields: Vec<FormField>) -> Result<EditBody, ApiError> {
    let mut body = EditBody::default();
    for field in fields {
        match field.name.as_str() {
            // OpenAI's SDKs send `image[]` for a list of images; one is taken.
            "image" | "image[]" => body.image = field.upload(),
            "mask" => body.mask = Some(field.upload()),
            name => edit_text(&mut body, name, field.text()?)?,
        }
    }
    if body.generation.prompt.is_empty() {
        return Err(ApiError::field("prompt", "missing or empty"));
    }
    Ok(body)
}

/// The text field `name` of an edit form, set in `body`.
fn edit_text(body: &mut EditBody, name: &str, text: String) -> Result<(), ApiError> {
    let (g, o) = (&mut body.generation, &mut body.options);
    match name {
        "prompt" => g.prompt = text,
        "negative_prompt" => g.negative_prompt = Some(text),
        "size" => g.size = Some(text),
        "response_format" => g.response_format = Some(text),
        "model" | "user" => {}
        "n" => g.n = Some(form_value(name, &text)?),
        "steps" => g.steps = Some(form_value(name, &text)?),
        "cfg" => g.cfg = Some(form_value(name, &text)?),
        "seed" => g.seed = Some(form_value(name, &text)?),
        "greedy" => g.greedy = Some(form_value(name, &text)?),
        "strength" => o.strength = Some(form_value(name, &text)?),
        "outpaint" => o.outpaint = Some(text),
        "keep_unmasked_pixels" => o.keep_unmasked_pixels = Some(form_value(name, &text)?),
        "mask_blur" => o.mask_blur = Some(form_value(name, &text)?),
        _ => return Err(ApiError::field(name, "unknown field; expected image, mask, prompt, n, size, response_format, model, user, negative_prompt, steps, cfg, seed, greedy, strength, outpaint, keep_unmasked_pixels, mask_blur")),
    }
    Ok(())
}

/// The JSON form of a caption or VQA request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct I2tJson {
    /// Base64, optionally as a `data:` URL.
    image: String,
    question: Option<String>,
    steps: Option<usize>,
    seed: Option<u64>,
    greedy: Option<bool>,
}

fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    let data = match text.split_once(";base64,") {
        Some((head, data)) if head.starts_with("data:") => data,
        _ => text,
    };
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::field(field, format!("not base64: {e}")))
}

/// A multipart text field parsed as `T`.
fn form_value<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, ApiError> {
    text.trim()
        .parse()
        .map_err(|_| ApiError::field(name, format!("`{text}` is not a valid value")))
}

/// One part of a multipart form.
struct FormField {
    name: String,
    file_name: Option<String>,
    bytes: Bytes,
}

impl FormField {
    fn upload(self) -> Upload {
        Upload {
            bytes: self.bytes.to_vec(),
            name: self.file_name,
        }
    }

    fn text(&self) -> Result<String, ApiError> {
        String::from_utf8(self.bytes.to_vec())
            .map_err(|_| ApiError::field(&self.name, "not UTF-8 text"))
    }
}

/// A request body as read: a multipart form's parts, or the bytes of JSON.
enum RawBody {
    Form(Vec<FormField>),
    Json(Bytes),
}

/// The body of a route that reads JSON or a multipart form.
async fn read_raw(state: &Arc<AppState>, request: Request) -> Result<RawBody, ApiError> {
    match body_kind(request.headers(), true)? {
        BodyKind::Form => Ok(RawBody::Form(read_form(state, request).await?)),
        BodyKind::Json => Ok(RawBody::Json(read_body(state, request).await?)),
    }
}

/// Every part of a multipart body, in order: each named, no name twice (`image[]`, the name
/// OpenAI's SDKs give a list of images, counts as `image`).
async fn read_form(state: &Arc<AppState>, request: Request) -> Result<Vec<FormField>, ApiError> {
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::field("body", e.body_text()))?;
    let broken = |e| multipart_refusal(e, state.max_body);
    let mut fields = Vec::new();
    let mut seen = HashSet::new();
    while let Some(field) = form.next_field().await.map_err(broken)? {
        let name = field.name().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(ApiError::field(
                "body",
                "a multipart part has no name; name each part by its field (`image`, `prompt`, ...)",
            ));
        }
        let key = name.strip_suffix("[]").unwrap_or(&name).to_string();
        if !seen.insert(key.clone()) {
            return Err(ApiError::field(&key, "given more than once"));
        }
        let file_name = field.file_name().map(str::to_string);
        let bytes = field.bytes().await.map_err(broken)?;
        fields.push(FormField {
            name,
            file_name,
            bytes,
        });
    }
    Ok(fields)
}

/// A multipart body that could not be read: 413 when it is over the body limit (which a
/// chunked body meets only while it is read), else 400 naming `body`.
fn multipart_refusal(e: MultipartError, limit: usize) -> ApiError {
    let over_limit = std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| e.is::<http_body_util::LengthLimitError>());
    if over_limit || e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large(limit);
    }
    ApiError::field(
        "body",
        format!("malformed multipart body: {}", e.body_text()),
    )
}

fn i2t_from_form(fields: Vec<FormField>) -> Result<I2tBody, ApiError> {
    let mut body = I2tBody::default();
    for field in fields {
        let name = field.name.as_str();
        if name == "image" {
            body.image = field.bytes.to_vec();
            continue;
        }
        let text = field.text()?;
        match name {
            "question" => body.question = Some(text),
            "steps" => body.steps = Some(form_value(name, &text)?),
            "seed" => body.seed = Some(form_value(name, &text)?),
            "greedy" => body.greedy = Some(form_value(name, &text)?),
            _ => {
                return Err(ApiError::field(
                    name,
                    "unknown field; expected image, question, steps, seed, greedy",
                ))
            }
        }
    }
    Ok(body)
}

/// The whole body, within the size limit.
async fn read_body(state: &Arc<AppState>, request: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state).await.map_err(|e| {
        let status = e.status();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.max_body),
            _ => ApiError::field("body", e.body_text()),
        }
    })
}

/// A caption or VQA body from JSON (`image` in base64) or multipart (`image` a file).
fn i2t_body(body: RawBody) -> Result<I2tBody, ApiError> {
    let bytes = match body {
        RawBody::Form(fields) => return i2t_from_form(fields),
        RawBody::Json(bytes) => bytes,
    };
    let json: I2tJson = parse_json(&bytes)?;
    Ok(I2tBody {
        image: decode_base64("image", &json.image)?,
        question: json.question,
        steps: json.steps,
        seed: json.seed,
        greedy: json.greedy,
    })
}

async fn image_to_text(
    state: Arc<AppState>,
    request: Request,
    vqa: bool,
) -> Result<Response, ApiError> {
    let body = read_raw(&state, request).await?;
    let checks = state.clone();
    let job = off_runtime(move || checks.checks().i2t(i2t_body(body)?, vqa)).await?;
    let done = submit(&state, Work::I2t(job)).await?;
    let Output::Text(text) = &done.output else {
        return Err(ApiError::internal(
            "the worker answered image-to-text with images",
        ));
    };
    let key = if vqa { "answer" } else { "text" };
    let answer = Json(serde_json::json!({ key: text, "model": state.model_id }));
    Ok(timed(answer.into_response(), Timing::of(&done)))
}

async fn caption(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Response, ApiError> {
    image_to_text(state, request, false).await
}

async fn vqa(State(state): State<Arc<AppState>>, request: Request) -> Result<Response, ApiError> {
    image_to_text(state, request, true).await
}

/// The status logged and counted for a request whose client went away before its answer
/// (nginx's "client closed request"); never sent.
const CLIENT_CLOSED: u16 = 499;

/// Logs one JSON line per request on stderr (id, method, route, status, queue wait, run time),
/// counts it for `/metrics`, names it in `x-request-id`, and gives every error response that
/// has no JSON body one (the router's 405, the body limit layer's 413).
async fn log_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let mut record = RequestRecord::new(state.clone(), &request);
    let mut response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        response = ApiError::bare(status, state.max_body).into_response();
    }
    response
        .headers_mut()
        .insert("x-request-id", HeaderValue::from(record.id));
    let timing = response.extensions().get::<Timing>().copied();
    record.write(status.as_u16(), timing);
    response
}

/// One request's log line and count, written once: with its answer, or as [`CLIENT_CLOSED`]
/// when the client goes away first (the server then drops the request's future, and this
/// with it).
struct RequestRecord {
    state: Arc<AppState>,
    id: u64,
    method: Method,
    route: String,
    start: Instant,
    written: bool,
}

impl RequestRecord {
    fn new(state: Arc<AppState>, request: &Request) -> Self {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| p.as_str())
            .to_string();
        RequestRecord {
            id: state.next_id.fetch_add(1, Ordering::Relaxed),
            state,
            method: request.method().clone(),
            route,
            start: Instant::now(),
            written: false,
        }
    }

    fn write(&mut self, status: u16, timing: Option<Timing>) {
        self.written = true;
        self.state.metrics.request(&self.route, status);
        if self.state.quiet {
            return;
        }
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let line = serde_json::json!({
            "id": self.id, "method": self.method.as_str(), "route": self.route, "status": status,
            "queue_wait_ms": timing.map(|t| ms(t.queue_wait)),
            "run_ms": timing.map(|t| ms(t.run)),
            "batch_images": timing.map(|t| t.batch_images),
            "seed": timing.and_then(|t| t.seed),
            "total_ms": ms(self.start.elapsed()),
        });
        eprintln!("{line}");
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.written {
            // Unwinding from a handler's panic is the server's fault, not a closed connection.
            let status = match std::thread::panicking() {
                true => StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
                false => CLIENT_CLOSED,
            };
            self.write(status, None);
        }
    }
}
