//! Errors of the HTTP API: `{"error": {"code": CODE, "message": TEXT}}`
//! with a stable code from [`ErrorCode`], and the request body extractor
//! whose rejections are such errors.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Maximum request body of an alert batch (`POST /v1/alerts` and the
/// webhooks), in bytes.
pub const MAX_ALERT_BODY_BYTES: usize = 16 << 20;
/// Maximum request body of every other route, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The stable error codes of the API. Clients branch on these, so a code
/// keeps its meaning once released. The OpenAPI document lists them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 401: no bearer token, or one that is unknown or revoked.
    Unauthenticated,
    /// 403: the token's role lacks the route's permission, or the caller
    /// is not among an approval's approvers.
    Forbidden,
    /// 403: the request names an actor other than its token.
    ActorMismatch,
    /// 401: a webhook request lacks `X-Palisade-Signature` or
    /// `X-Palisade-Timestamp`.
    SignatureMissing,
    /// 401: a webhook signature is malformed or does not match.
    SignatureMismatch,
    /// 401: a webhook timestamp is not a number or is too far from now.
    TimestampInvalid,
    /// 404: no such record, route or webhook.
    NotFound,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 413: the body is over the route's size limit.
    BodyTooLarge,
    /// 400: an alert batch is empty.
    EmptyBody,
    /// 400: the body is not what the route takes.
    InvalidBody,
    /// 400: the query string is invalid.
    InvalidQuery,
    /// 400: a case request has an invalid value.
    InvalidRequest,
    /// 400: a decision is not one the route takes.
    InvalidDecision,
    /// 400: a value given to a run operation is invalid.
    Invalid,
    /// 409: the request does not fit the current state.
    Conflict,
    /// 500: the daemon failed; the message says how.
    Internal,
    /// 503: a webhook cannot check signatures because its secret has no
    /// value.
    WebhookUnavailable,
    /// 422: an uploaded plugin has no valid signature by a trusted key.
    PluginSignatureInvalid,
    /// 422: an uploaded plugin is not a compatible component, or its
    /// description or grant is invalid.
    PluginInvalid,
    /// 422: an uploaded plugin failed its own `self-test` action.
    PluginSelfTestFailed,
    /// 409: a plugin version lacks an action a loaded playbook calls.
    PluginIncompatible,
    /// 409: a plugin version is already installed with other contents.
    PluginVersionConflict,
}

impl ErrorCode {
    /// Every code, in the order of the OpenAPI document.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::ActorMismatch,
        ErrorCode::SignatureMissing,
        ErrorCode::SignatureMismatch,
        ErrorCode::TimestampInvalid,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::BodyTooLarge,
        ErrorCode::EmptyBody,
        ErrorCode::InvalidBody,
        ErrorCode::InvalidQuery,
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidDecision,
        ErrorCode::Invalid,
        ErrorCode::Conflict,
        ErrorCode::Internal,
        ErrorCode::WebhookUnavailable,
        ErrorCode::PluginSignatureInvalid,
        ErrorCode::PluginInvalid,
        ErrorCode::PluginSelfTestFailed,
        ErrorCode::PluginIncompatible,
        ErrorCode::PluginVersionConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ActorMismatch => "actor_mismatch",
            ErrorCode::SignatureMissing => "signature_missing",
            ErrorCode::SignatureMismatch => "signature_mismatch",
            ErrorCode::TimestampInvalid => "timestamp_invalid",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::EmptyBody => "empty_body",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidDecision => "invalid_decision",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
            ErrorCode::WebhookUnavailable => "webhook_unavailable",
            ErrorCode::PluginSignatureInvalid => "plugin_signature_invalid",
            ErrorCode::PluginInvalid => "plugin_invalid",
            ErrorCode::PluginSelfTestFailed => "plugin_self_test_failed",
            ErrorCode::PluginIncompatible => "plugin_incompatible",
            ErrorCode::PluginVersionConflict => "plugin_version_conflict",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Unauthenticated
            | ErrorCode::SignatureMissing
            | ErrorCode::SignatureMismatch
            | ErrorCode::TimestampInvalid => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::ActorMismatch => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::EmptyBody
            | ErrorCode::InvalidBody
            | ErrorCode::InvalidQuery
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidDecision
            | ErrorCode::Invalid => StatusCode::BAD_REQUEST,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::WebhookUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::PluginSignatureInvalid
            | ErrorCode::PluginInvalid
            | ErrorCode::PluginSelfTestFailed => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::PluginIncompatible | ErrorCode::PluginVersionConflict => {
                StatusCode::CONFLICT
            }
        }
    }
}

/// An error response of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    /// An error with `code` and the status that goes with it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: code.status(),
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

/// A 500 for a failure of the daemon itself, logged with its message.
pub fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "request failed");
    ApiError::new(ErrorCode::Internal, error.to_string())
}

/// Maps a failure to read the request body: 413 `body_too_large` over the
/// route's limit, else 400 `invalid_body`.
pub fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            ErrorCode::BodyTooLarge,
            format!(
                "the request body is over the limit of this route: {MAX_ALERT_BODY_BYTES} bytes for alert batches (`POST /v1/alerts` and webhooks), {MAX_BODY_BYTES} bytes for other routes; send a smaller body, or split an alert batch"
            ),
        );
    }
    ApiError::new(
        ErrorCode::InvalidBody,
        format!("cannot read the request body: {}", rejection.body_text()),
    )
}

/// The whole request body, read up to the route's size limit. A body over
/// the limit is rejected with 413 `body_too_large`.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(body_error)
    }
}
