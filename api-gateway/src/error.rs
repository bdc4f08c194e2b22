//! The gateway's errors. Every one answers with a JSON body `{"error": "…"}` and a status
//! code: 400 bad path, 404 unknown cluster/team/worker/page, 405 wrong method, 503 the
//! scheduler or a worker unreachable, 504 no answer in time; other gRPC errors map by their
//! code (see [`ApiError::status_code`]).
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// An unknown cluster, team, worker or page.
    #[error("{0}")]
    NotFound(String),
    /// A malformed path.
    #[error("{0}")]
    BadRequest(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The scheduler or a worker cannot be reached (or has no usable address).
    #[error("{backend} is unreachable: {message}")]
    Unavailable { backend: String, message: String },
    /// The scheduler or a worker did not answer in time.
    #[error("{backend} did not answer within {}s", after.as_secs_f64())]
    Timeout { backend: String, after: Duration },
    /// The scheduler or a worker answered with an error.
    #[error("{backend}: {}", status.message())]
    Backend {
        backend: String,
        status: tonic::Status,
    },
}

impl ApiError {
    /// The error of a failed call to `backend` ("scheduler", "worker w-1").
    pub fn from_status(backend: impl Into<String>, status: tonic::Status) -> Self {
        let backend = backend.into();
        match status.code() {
            Code::Unavailable => Self::Unavailable {
                backend,
                message: status.message().to_string(),
            },
            _ => Self::Backend { backend, status },
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Backend { status, .. } => match status.code() {
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::InvalidArgument => StatusCode::BAD_REQUEST,
                Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
                // Anything else went wrong upstream.
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status_code();
        let error = self.to_string();
        if code.is_server_error() {
            tracing::warn!(status = code.as_u16(), "{error}");
        } else {
            tracing::debug!(status = code.as_u16(), "{error}");
        }
        (code, Json(ErrorBody { error })).into_response()
    }
}

/// A scheduler or worker address that is not a usable URI.
#[derive(Debug, thiserror::Error)]
#[error("invalid gRPC address {address:?}: {reason}")]
pub struct InvalidAddress {
    pub address: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_codes() {
        let cases = [
            (tonic::Status::not_found("x"), StatusCode::NOT_FOUND),
            (
                tonic::Status::unavailable("x"),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                tonic::Status::deadline_exceeded("x"),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                tonic::Status::invalid_argument("x"),
                StatusCode::BAD_REQUEST,
            ),
            (tonic::Status::internal("x"), StatusCode::BAD_GATEWAY),
            (
                tonic::Status::unimplemented("x"),
                StatusCode::NOT_IMPLEMENTED,
            ),
        ];
        for (status, code) in cases {
            let grpc = status.code();
            assert_eq!(
                ApiError::from_status("scheduler", status).status_code(),
                code,
                "{grpc:?}"
            );
        }
    }

    #[test]
    fn unavailable_names_the_backend() {
        let e = ApiError::from_status("worker w-1", tonic::Status::unavailable("refused"));
        assert_eq!(e.to_string(), "worker w-1 is unreachable: refused");
    }
}
