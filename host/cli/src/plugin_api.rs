//! The plugin routes of the HTTP API.
//!
//! - `GET /v1/plugins`: every installed plugin with its versions;
//! - `POST /v1/plugins`: install the component in the body
//!   (`application/wasm`), with its detached signature, base64-encoded, in
//!   the `X-Palisade-Signature` header when it has no embedded one.
//!   `?stage=true` installs without activating;
//! - `GET /v1/plugins/{name}`: actions, requested and granted
//!   capabilities, versions and history;
//! - `GET /v1/plugins/{name}/history`: installs, swaps and rollbacks;
//! - `POST /v1/plugins/{name}/activate` with `{"version": "1.2.0"}`;
//! - `POST /v1/plugins/{name}/rollback`: back to the version active before.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api_error::{ApiError, ErrorCode, body_error};
use crate::auth::Identity;
use crate::registry::{InstallRequest, Registry, RegistryError};

/// Maximum size of an uploaded component, in bytes.
pub const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// Header that carries a detached signature, base64-encoded.
pub const SIGNATURE_HEADER: &str = "x-palisade-signature";

/// State of the plugin routes.
#[derive(Clone)]
pub struct PluginState(pub Arc<Registry>);

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let code = match &error {
            RegistryError::Signature { .. } => ErrorCode::PluginSignatureInvalid,
            RegistryError::Load(_) => ErrorCode::PluginInvalid,
            RegistryError::SelfTest { .. } => ErrorCode::PluginSelfTestFailed,
            RegistryError::MissingAction { .. } => ErrorCode::PluginIncompatible,
            RegistryError::VersionConflict { .. } => ErrorCode::PluginVersionConflict,
            RegistryError::UnknownVersion { .. } | RegistryError::UnknownPlugin { .. } => {
                ErrorCode::NotFound
            }
            RegistryError::NothingToRollBack { .. } => ErrorCode::Conflict,
            RegistryError::Storage(_) => {
                tracing::error!(%error, "plugin registry failed");
                ErrorCode::Internal
            }
        };
        ApiError::new(code, error.to_string())
    }
}

#[derive(Deserialize)]
pub struct InstallQuery {
    #[serde(default)]
    stage: bool,
}

pub async fn list_plugins(State(state): State<PluginState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "plugins": state.0.list()? })))
}

pub async fn show_plugin(
    State(state): State<PluginState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.0.show(&name)?))
}

pub async fn plugin_history(
    State(state): State<PluginState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let history = state.0.history(&name)?;
    if history.is_empty() {
        return Err(RegistryError::UnknownPlugin { plugin: name }.into());
    }
    Ok(Json(json!({ "plugin": name, "history": history })))
}

pub async fn install_plugin(
    State(state): State<PluginState>,
    identity: Identity,
    query: Result<Query<InstallQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            ErrorCode::InvalidQuery,
            format!(
                "{}; the only parameter is `stage=true` or `stage=false`",
                rejection.body_text()
            ),
        )
    })?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::BodyTooLarge,
                format!(
                    "the component is over the upload limit of {MAX_PLUGIN_BYTES} bytes; a plugin that large is unlikely to be a single connector, so check the file"
                ),
            )
        } else {
            body_error(rejection)
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyBody,
            "the body is empty; send the component's bytes as application/wasm",
        ));
    }
    let detached = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(value) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.as_bytes())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidBody,
                        "header X-Palisade-Signature is not base64 of a signature file; send the `.sig` file's contents base64-encoded",
                    )
                })?;
            Some(decoded)
        }
    };
    let report = state
        .0
        .install(InstallRequest {
            bytes: body.to_vec(),
            detached_signature: detached,
            source: format!("upload by {}", identity.name),
            actor: identity.name.clone(),
            activate: !query.stage,
        })
        .await?;
    let status = if report.already_installed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(serde_json::to_value(report).unwrap_or_default()),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    version: String,
}

pub async fn activate_plugin(
    State(state): State<PluginState>,
    identity: Identity,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(body_error)?;
    let request: ActivateBody = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("the body must be {{\"version\": \"1.2.0\"}}: {error}"),
        )
    })?;
    let replaced = state
        .0
        .activate(&name, &request.version, &identity.name)
        .await?;
    Ok(Json(json!({
        "plugin": name,
        "active_version": request.version,
        "replaced": replaced,
    })))
}

pub async fn rollback_plugin(
    State(state): State<PluginState>,
    identity: Identity,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (version, replaced) = state.0.rollback(&name, &identity.name).await?;
    Ok(Json(json!({
        "plugin": name,
        "active_version": version,
        "replaced": replaced,
    })))
}
