//! The one error shape of the API: `{"error": {"code", "message", "field"}}` with a status code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use muster_core::{ApplyError, ValidationError};
use muster_proto::{ErrorBody, ErrorDetail};

use crate::raft::ProposeError;

/// Codes that can come back from the leader in a forwarded answer.
const KNOWN_CODES: &[&str] = &[
    "unknown_instance",
    "not_found",
    "conflict",
    "invalid_transition",
    "limit_exceeded",
    "refused",
    "no_leader",
    "indeterminate",
    "unavailable",
];

/// An API error: a status, a stable code, a message and maybe the offending field.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field or parameter at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 `invalid_parameter` for a query or path parameter.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).field(param)
    }

    /// 404 `unknown_instance`.
    pub fn unknown_instance(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_instance",
            format!("no instance with id {id:?} is registered; register it again"),
        )
    }

    /// Rebuilds an error that crossed from another node.
    pub fn from_detail(d: ErrorDetail) -> Self {
        let status = match d.code.as_str() {
            "unknown_instance" | "not_found" => StatusCode::NOT_FOUND,
            "conflict" | "invalid_transition" | "limit_exceeded" | "refused" => {
                StatusCode::CONFLICT
            }
            "no_leader" | "indeterminate" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        };
        let code = KNOWN_CODES
            .iter()
            .find(|c| **c == d.code)
            .copied()
            .unwrap_or("upstream");
        ApiError {
            status,
            code,
            message: d.message,
            field: d.field,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The wire form.
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail {
            code: self.code.into(),
            message: self.message.clone(),
            field: self.field.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.detail(),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (self.status, bytes).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.code, e.message).field(e.field)
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        let message = e.to_string();
        match e {
            ApplyError::UnknownInstance(id) => ApiError::unknown_instance(&id),
            ApplyError::IdConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message).field("instanceId")
            }
            ApplyError::LimitExceeded { .. } => {
                ApiError::new(StatusCode::CONFLICT, "limit_exceeded", message)
            }
            ApplyError::InvalidTransition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", message).field("status")
            }
            _ => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        let message = e.to_string();
        match e {
            ProposeError::NoLeader => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", message)
            }
            ProposeError::Indeterminate(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "indeterminate", message)
            }
            ProposeError::Refused(_) => ApiError::new(StatusCode::CONFLICT, "refused", message),
            _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        }
    }
}
