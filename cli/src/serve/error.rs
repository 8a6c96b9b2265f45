//! Every error the server answers, as one JSON shape (OpenAI's): `{"error": {"message", "type",
//! "param", "code"}}`, where `param` names the request field at fault.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A short machine-readable name of the error class.
    pub code: &'static str,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code,
            retry_after: None,
        }
    }

    /// 400: field `param` of the request is malformed or out of range.
    pub fn field(param: &str, message: impl Into<String>) -> Self {
        let message = format!("`{param}`: {}", message.into());
        ApiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
        }
    }

    /// 413: the body is over `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {limit} bytes (`muddit serve --max-body`)"),
        )
    }

    /// 429: the queue is full; try again in `retry_after` seconds.
    pub fn queue_full(capacity: usize, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                format!("{capacity} requests are already waiting (`muddit serve --queue`); retry after {retry_after} s"),
            )
        }
    }

    /// 503: the server is stopping.
    pub fn stopping() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the server is shutting down",
        )
    }

    /// 504: the request was not answered within the per-request timeout.
    pub fn timeout(seconds: f64) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no answer within {seconds} s (`muddit serve --request-timeout`); its work was cancelled"),
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}; see GET /, /health, /metrics, /v1/models; POST /v1/images/generations, /v1/images/edits, /v1/captions, /v1/vqa"),
        )
    }

    /// 415: the body's Content-Type `given` is not one the route reads; it reads `accepted`.
    pub fn media_type(given: &str, accepted: &str) -> Self {
        ApiError {
            param: Some("content-type".into()),
            ..Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("`content-type`: `{given}` is not read here; send {accepted}"),
            )
        }
    }

    /// 500: the model run failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON body of a response with `status` that its handler left without one (a 405 of
    /// the router, a 413 of the body limit layer).
    pub fn bare(status: StatusCode, limit: usize) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large(limit),
            _ => Self::new(
                status,
                "http",
                status.canonical_reason().unwrap_or("error").to_lowercase(),
            ),
        }
    }
}

/// An engine error: bad input names its field (400), anything else is the server's (500).
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast_ref::<muddit_engine::Error>() {
            Some(muddit_engine::Error::InvalidInput { name, message }) => {
                ApiError::field(name, message.clone())
            }
            _ => ApiError::internal(format!("{e:#}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let body = serde_json::json!({ "error": {
            "message": self.message, "type": kind, "param": self.param, "code": self.code,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
