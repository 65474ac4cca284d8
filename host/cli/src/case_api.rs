//! The case routes of the HTTP API. Each handler parses the request and
//! calls [`CaseService`], off the async threads because the service writes
//! to the database and flushes it.
//!
//! - `GET /v1/cases?status=&severity=&assignee=&tag=&breached=&text=`
//! - `GET /v1/cases/stats?since=7d`
//! - `GET /v1/cases/{id}` and `PATCH /v1/cases/{id}`
//! - `POST /v1/cases/{id}/comments` with `{"text"}`
//! - `POST /v1/cases/{id}/tasks` with `{"title"}`, which returns
//!   `{"task_id", "case"}`
//! - `POST /v1/cases/{id}/tasks/{task}/done`
//!
//! The other routes return the case, or the list of cases, with its SLA
//! view. The actor of a write is the name of the request's token. A
//! request may name it in the body's `actor` or in `?actor=`, and one that
//! names another actor is rejected. Bodies are JSON whatever their content
//! type, and an empty body is an empty object.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use palisade_engine::{CaseEdit, CaseError, CaseFilter, CaseQuery, CaseService, parse_period};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::api_error::{ApiError, Body, ErrorCode, internal};
use crate::auth::Identity;

/// Period of `GET /v1/cases/stats` without `since`.
const DEFAULT_STATS_PERIOD: &str = "7d";

/// The state the case routes take from the router's state.
#[derive(Clone)]
pub struct CaseState(pub Arc<CaseService>);

/// Returns the case routes for a router whose state provides the service.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    CaseState: FromRef<S>,
{
    Router::new()
        .route("/v1/cases", get(list_cases))
        .route("/v1/cases/stats", get(case_stats))
        .route("/v1/cases/{id}", get(show_case).patch(update_case))
        .route("/v1/cases/{id}/comments", post(add_comment))
        .route("/v1/cases/{id}/tasks", post(add_task))
        .route("/v1/cases/{id}/tasks/{task}/done", post(complete_task))
}

fn bad_request(code: ErrorCode, message: String) -> ApiError {
    tracing::debug!(code = code.as_str(), error = %message, "case request rejected");
    ApiError::new(code, message)
}

impl From<CaseError> for ApiError {
    fn from(error: CaseError) -> Self {
        match error {
            CaseError::NotFound(_) => {
                tracing::debug!(%error, "case request rejected");
                ApiError::new(ErrorCode::NotFound, error.to_string())
            }
            CaseError::Invalid(message) => bad_request(ErrorCode::InvalidRequest, message),
            CaseError::Store(_) | CaseError::Audit { .. } => {
                // The chain names the store failure under the summary.
                let chain = anyhow::Error::from(error);
                internal(format!("{chain:#}"))
            }
        }
    }
}

/// Runs `work` on the blocking pool and converts its result to JSON.
async fn blocking<T, F>(status: StatusCode, work: F) -> Result<(StatusCode, Json<Value>), ApiError>
where
    T: serde::Serialize,
    F: FnOnce() -> Result<T, CaseError> + Send + 'static,
    T: Send + 'static,
{
    let value = tokio::task::spawn_blocking(work)
        .await
        .map_err(internal)??;
    Ok((status, Json(serde_json::to_value(value).map_err(internal)?)))
}

fn query_error(rejection: QueryRejection) -> ApiError {
    bad_request(ErrorCode::InvalidQuery, rejection.body_text())
}

/// `?actor=` of a write.
#[derive(Debug, Default, Deserialize)]
struct ActorQuery {
    actor: Option<String>,
}

/// Reads a JSON object body, which may be empty, and takes `actor` out of
/// it. The actor is the name of `identity`'s token; an `actor` in the body
/// or in `?actor=` must be that name.
fn take_actor(
    identity: &Identity,
    Body(body): Body,
    query: Result<Query<ActorQuery>, QueryRejection>,
) -> Result<(Map<String, Value>, String), ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let parsed = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(&body).map_err(|error| {
            bad_request(
                ErrorCode::InvalidBody,
                format!("the body is not valid JSON: {error}"),
            )
        })?
    };
    let Value::Object(mut fields) = parsed else {
        return Err(bad_request(
            ErrorCode::InvalidBody,
            format!(
                "the body is {parsed}, not a JSON object; send an object such as {{\"actor\": \"ana\"}}"
            ),
        ));
    };
    let claimed = match fields.remove("actor") {
        None | Some(Value::Null) => query.actor,
        Some(Value::String(actor)) => Some(actor),
        Some(other) => {
            return Err(bad_request(
                ErrorCode::InvalidBody,
                format!("`actor` is {other}, not a string; send the name of who acts"),
            ));
        }
    };
    let actor = identity.actor(claimed.as_deref())?;
    Ok((fields, actor))
}

/// Reads the text field `name` of `fields` and rejects any other field.
fn text_field(mut fields: Map<String, Value>, name: &str) -> Result<String, ApiError> {
    let value = match fields.remove(name) {
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(bad_request(
                ErrorCode::InvalidBody,
                format!("`{name}` is {other}, not a string"),
            ));
        }
        None => {
            return Err(bad_request(
                ErrorCode::InvalidBody,
                format!("the body has no `{name}`; send {{\"{name}\": \"...\"}}"),
            ));
        }
    };
    if let Some(unknown) = fields.keys().next() {
        return Err(bad_request(
            ErrorCode::InvalidBody,
            format!("unknown field `{unknown}`; the body takes `{name}` and `actor`"),
        ));
    }
    Ok(value)
}

async fn list_cases(
    State(CaseState(service)): State<CaseState>,
    query: Result<Query<CaseQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let filter = CaseFilter::parse(&query)?;
    blocking(StatusCode::OK, move || service.list(&filter, Utc::now())).await
}

async fn show_case(
    State(CaseState(service)): State<CaseState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    blocking(StatusCode::OK, move || service.case(&id, Utc::now())).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    since: Option<String>,
}

async fn case_stats(
    State(CaseState(service)): State<CaseState>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let text = query.since.as_deref().unwrap_or(DEFAULT_STATS_PERIOD);
    let period = parse_period(text)?;
    blocking(StatusCode::OK, move || {
        let now = Utc::now();
        service.stats(now - period, now)
    })
    .await
}

async fn update_case(
    State(CaseState(service)): State<CaseState>,
    Path(id): Path<String>,
    identity: Identity,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (fields, actor) = take_actor(&identity, body, query)?;
    let edit: CaseEdit = serde_json::from_value(Value::Object(fields)).map_err(|error| {
        bad_request(
            ErrorCode::InvalidBody,
            format!("invalid case update: {error}; send status, assignee, add_tags, remove_tags, priority, severity or actor"),
        )
    })?;
    blocking(StatusCode::OK, move || {
        service.update(&id, &edit, &actor, Utc::now())
    })
    .await
}

async fn add_comment(
    State(CaseState(service)): State<CaseState>,
    Path(id): Path<String>,
    identity: Identity,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (fields, actor) = take_actor(&identity, body, query)?;
    let text = text_field(fields, "text")?;
    blocking(StatusCode::CREATED, move || {
        service.comment(&id, &actor, &text, Utc::now())
    })
    .await
}

async fn add_task(
    State(CaseState(service)): State<CaseState>,
    Path(id): Path<String>,
    identity: Identity,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (fields, actor) = take_actor(&identity, body, query)?;
    let title = text_field(fields, "title")?;
    blocking(StatusCode::CREATED, move || {
        let (case, task_id) = service.add_task(&id, &actor, &title, Utc::now())?;
        Ok(json!({ "task_id": task_id, "case": case }))
    })
    .await
}

async fn complete_task(
    State(CaseState(service)): State<CaseState>,
    Path((id, task)): Path<(String, String)>,
    identity: Identity,
    query: Result<Query<ActorQuery>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (fields, actor) = take_actor(&identity, body, query)?;
    if let Some(unknown) = fields.keys().next() {
        return Err(bad_request(
            ErrorCode::InvalidBody,
            format!("unknown field `{unknown}`; the body takes only `actor`"),
        ));
    }
    blocking(StatusCode::OK, move || {
        service.complete_task(&id, &task, &actor, Utc::now())
    })
    .await
}
