//! The daemon: alerts in over HTTP, playbook runs in the background, cases
//! and runs out over HTTP.
//!
//! `POST /v1/alerts` answers only after the alerts are stored and flushed to
//! disk. Runs happen afterwards on worker tasks; an alert whose runs had not
//! finished when the daemon stopped is resumed at the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade_engine::Engine;
use palisade_model::{Alert, parse_alerts};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::host::{self, RuntimeCaller};

/// Maximum request body of an alert batch, in bytes.
const MAX_BODY_BYTES: usize = 16 << 20;
/// Alerts waiting for a worker; ingest waits when the queue is full.
const QUEUE_CAPACITY: usize = 10_000;
/// Worker tasks running playbooks.
const WORKERS: usize = 4;

struct AppState {
    engine: Arc<Engine<RuntimeCaller>>,
    caller: Arc<RuntimeCaller>,
    queue: mpsc::Sender<(Alert, String)>,
}

/// Runs the daemon on `listen` until `shutdown` completes. Prints
/// `listening on ADDRESS` to standard output once the socket is bound.
pub async fn serve(
    config: &Config,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let host = host::build(config, None).await?;
    let engine = Arc::new(host.engine);

    let (queue, receiver) = mpsc::channel::<(Alert, String)>(QUEUE_CAPACITY);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(tokio::spawn(worker(engine.clone(), receiver.clone())));
    }

    let resumed = engine.resume_pending().await?;
    if resumed > 0 {
        tracing::info!(
            count = resumed,
            "resumed alerts accepted before the last stop"
        );
    }

    let state = Arc::new(AppState {
        engine: engine.clone(),
        caller: host.caller.clone(),
        queue,
    });
    let app = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/alerts", post(ingest))
        .route("/v1/cases", get(list_cases))
        .route("/v1/cases/{id}", get(show_case))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/quotas", get(list_quotas))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; is another daemon running there?"))?;
    let address = listener.local_addr()?;
    println!("listening on {address}");
    tracing::info!(%address, "daemon started");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;

    // Dropping the router dropped the last sender, so the workers finish
    // the queued alerts and stop.
    for worker in workers {
        let _ = worker.await;
    }
    engine.store().flush()?;
    tracing::info!("daemon stopped");
    Ok(())
}

async fn worker(
    engine: Arc<Engine<RuntimeCaller>>,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<(Alert, String)>>>,
) {
    loop {
        let next = receiver.lock().await.recv().await;
        let Some((alert, case_id)) = next else { break };
        if let Err(error) = engine.run_matching(&alert, &case_id).await {
            tracing::error!(alert.id = %alert.id, case.id = %case_id, %error, "playbook runs failed; the alert stays pending");
        }
    }
}

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "request failed");
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: error.to_string(),
    }
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!("{what} {id:?} not found"),
    }
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: format!("no route {}; the API is under /v1", uri.path()),
    }
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Accepts a JSON document, a JSON array or JSON lines of alerts. Answers
/// 202 with the accepted alerts and their cases, and the rejected records
/// with their line and reason; 400 when nothing was accepted.
async fn ingest(State(state): State<Arc<AppState>>, body: String) -> Result<Response, ApiError> {
    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    let mut to_run = Vec::new();
    for parsed in parse_alerts(&body) {
        match parsed {
            Ok(alert) => {
                let report = state.engine.accept(&alert).map_err(internal)?;
                accepted.push(json!({
                    "alert_id": report.alert_id,
                    "case_id": report.case_id,
                    "duplicate": !report.alert_is_new,
                }));
                if report.alert_is_new {
                    to_run.push((alert, report.case_id));
                }
            }
            Err(error) => rejected.push(json!({ "line": error.line, "message": error.message })),
        }
    }
    // Acknowledge only what is on disk.
    state.engine.store().flush().map_err(internal)?;
    for item in to_run {
        if state.queue.send(item).await.is_err() {
            // The daemon is stopping; the alert stays pending and resumes at
            // the next start.
            break;
        }
    }
    let status = if accepted.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    let body = json!({ "accepted": accepted, "rejected": rejected });
    Ok((status, Json(body)).into_response())
}

async fn list_cases(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let cases = state.engine.store().cases().map_err(internal)?;
    Ok(Json(serde_json::to_value(cases).map_err(internal)?))
}

async fn show_case(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let case = state
        .engine
        .store()
        .case(&id)
        .map_err(internal)?
        .ok_or_else(|| not_found("case", &id))?;
    Ok(Json(serde_json::to_value(case).map_err(internal)?))
}

async fn list_runs(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let runs = state.engine.store().runs().map_err(internal)?;
    Ok(Json(serde_json::to_value(runs).map_err(internal)?))
}

async fn show_run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run = state
        .engine
        .store()
        .run(&id)
        .map_err(internal)?
        .ok_or_else(|| not_found("run", &id))?;
    Ok(Json(serde_json::to_value(run).map_err(internal)?))
}

/// The live quota state of every plugin with quota rules or a pause.
async fn list_quotas(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let quotas = state.caller.runtime.quotas().status();
    Ok(Json(serde_json::to_value(quotas).map_err(internal)?))
}
