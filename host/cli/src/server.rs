//! The daemon: alerts in over HTTP, playbook runs in the background, cases
//! and runs out over HTTP.
//!
//! `POST /v1/alerts` responds only after the alerts are stored and flushed to
//! disk. Runs happen afterwards on worker tasks; an alert whose runs had not
//! finished when the daemon stopped is resumed at the next start.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade_engine::{CaseService, Engine, EngineError, ParkedDecision};
use palisade_model::{Alert, parse_alert_bytes};
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

/// Work for the run workers.
enum Work {
    /// Start the runs of a newly accepted alert, with its case.
    Alert(Box<Alert>, String),
    /// Continue a run: one interrupted by a stop, or a waiting run whose
    /// time has come.
    Run(String),
}

struct AppState {
    engine: Arc<Engine<RuntimeCaller>>,
    caller: Arc<RuntimeCaller>,
    queue: mpsc::Sender<Work>,
    cases: Arc<CaseService>,
}

impl axum::extract::FromRef<Arc<AppState>> for crate::case_api::CaseState {
    fn from_ref(state: &Arc<AppState>) -> Self {
        Self(state.cases.clone())
    }
}

/// Runs the daemon on `listen` until `shutdown` completes. Prints
/// `listening on ADDRESS` to standard output once the socket is bound.
pub async fn serve(
    config: &Config,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sla = config.sla.policy().map_err(anyhow::Error::msg)?;
    let host = host::build(config, None).await?;
    let engine = Arc::new(host.engine);

    let (queue, receiver) = mpsc::channel::<Work>(QUEUE_CAPACITY);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(tokio::spawn(worker(engine.clone(), receiver.clone())));
    }

    // Work left by the last stop is queued behind the listener, so the
    // daemon responds at once however much there is.
    let recovery = engine.recover()?;
    if !recovery.pending.is_empty() || !recovery.interrupted.is_empty() {
        tracing::info!(
            alerts = recovery.pending.len(),
            runs = recovery.interrupted.len(),
            "resuming alerts and runs left by the last stop"
        );
        let queue = queue.clone();
        tokio::spawn(async move {
            let runs = recovery.interrupted.into_iter().map(Work::Run);
            let alerts = recovery
                .pending
                .into_iter()
                .map(|(alert, case_id)| Work::Alert(Box::new(alert), case_id));
            for work in runs.chain(alerts) {
                if queue.send(work).await.is_err() {
                    break;
                }
            }
        });
    }
    let timers = tokio::spawn(wake_due_runs(engine.clone(), queue.downgrade()));

    let state = Arc::new(AppState {
        engine: engine.clone(),
        caller: host.caller.clone(),
        queue,
        cases: Arc::new(CaseService::new(engine.store().clone(), sla)),
    });
    let app = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/alerts", post(ingest))
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/resume", post(resume_parked_run))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{run}/{step}", post(answer_approval))
        .route("/v1/quotas", get(list_quotas))
        .merge(crate::case_api::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
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
    // the queued alerts and stop. Waiting runs stay stored for the next
    // start.
    timers.abort();
    for worker in workers {
        let _ = worker.await;
    }
    engine.store().flush()?;
    tracing::info!("daemon stopped");
    Ok(())
}

async fn worker(
    engine: Arc<Engine<RuntimeCaller>>,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Work>>>,
) {
    loop {
        let next = receiver.lock().await.recv().await;
        match next {
            None => break,
            Some(Work::Alert(alert, case_id)) => {
                if let Err(error) = engine.run_matching(&alert, &case_id).await {
                    tracing::error!(alert.id = %alert.id, case.id = %case_id, %error, "playbook runs failed; the alert stays pending");
                }
            }
            Some(Work::Run(run_id)) => {
                if let Err(error) = engine.resume_run(&run_id).await {
                    tracing::error!(run.id = %run_id, %error, "continuing the run failed; it is retried at the next start");
                }
            }
        }
    }
}

/// Maximum sleep of the timer task, so a deadline written by another path
/// (a run that starts waiting) is seen soon without a wake-up signal.
const TIMER_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Queues waiting runs when their stored wake time comes. A run queued for
/// a wake time is not queued again for the same time.
async fn wake_due_runs(engine: Arc<Engine<RuntimeCaller>>, queue: mpsc::WeakSender<Work>) {
    let mut queued: std::collections::HashMap<String, chrono::DateTime<chrono::Utc>> =
        std::collections::HashMap::new();
    loop {
        let due = match engine.due_runs(1_000) {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "reading due runs failed");
                Vec::new()
            }
        };
        queued.retain(|id, at| {
            due.iter()
                .any(|(due_id, due_at)| due_id == id && due_at == at)
        });
        for (run_id, at) in due {
            if queued.get(&run_id) == Some(&at) {
                continue;
            }
            let Some(queue) = queue.upgrade() else { return };
            if queue.send(Work::Run(run_id.clone())).await.is_err() {
                return;
            }
            queued.insert(run_id, at);
        }
        let sleep = match engine.next_wake() {
            Ok(Some(at)) => (at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
                .clamp(std::time::Duration::from_millis(10), TIMER_POLL),
            _ => TIMER_POLL,
        };
        tokio::time::sleep(sleep).await;
    }
}

pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
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

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: format!("{method} is not allowed on {}", uri.path()),
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

/// Accepts a JSON document, a JSON array or JSON lines of alerts. Returns
/// 202 with the accepted alerts and their cases, and the rejected records
/// with their line and reason; 400 when nothing was accepted.
async fn ingest(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        code: "invalid_body",
        message: format!(
            "{}; send at most {MAX_BODY_BYTES} bytes of JSON, JSON lines or EVE lines",
            rejection.body_text()
        ),
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "empty_body",
            message: "the request body is empty; send alerts as JSON, JSON lines or EVE lines"
                .into(),
        });
    }

    // Parsing and the database writes are blocking work; keep them off the
    // threads that serve other requests.
    let engine = state.engine.clone();
    let outcome = tokio::task::spawn_blocking(move || accept_batch(&engine, &body))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    for (alert, case_id) in outcome.to_run {
        if state
            .queue
            .send(Work::Alert(Box::new(alert), case_id))
            .await
            .is_err()
        {
            // The daemon is stopping; the alert stays pending and resumes at
            // the next start.
            break;
        }
    }
    let status = if outcome.accepted.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::ACCEPTED
    };
    let body = json!({ "accepted": outcome.accepted, "rejected": outcome.rejected });
    Ok((status, Json(body)).into_response())
}

struct BatchOutcome {
    accepted: Vec<Value>,
    rejected: Vec<Value>,
    to_run: Vec<(Alert, String)>,
}

/// Parses and stores a batch of alerts, then flushes, so everything in
/// `accepted` is on disk before the caller acknowledges it.
fn accept_batch(
    engine: &Engine<RuntimeCaller>,
    body: &[u8],
) -> Result<BatchOutcome, palisade_engine::EngineError> {
    let mut outcome = BatchOutcome {
        accepted: Vec::new(),
        rejected: Vec::new(),
        to_run: Vec::new(),
    };
    for parsed in parse_alert_bytes(body) {
        match parsed {
            Ok(alert) => {
                let report = engine.accept(&alert)?;
                outcome.accepted.push(json!({
                    "alert_id": report.alert_id,
                    "case_id": report.case_id,
                    "duplicate": !report.alert_is_new,
                }));
                if report.alert_is_new {
                    outcome.to_run.push((alert, report.case_id));
                }
            }
            Err(error) => outcome
                .rejected
                .push(json!({ "line": error.line, "message": error.message })),
        }
    }
    engine.store().flush()?;
    Ok(outcome)
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

/// Body of `POST /v1/runs/{id}/resume`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    /// `retry`, `skip` or `fail`.
    decision: String,
    /// Name of the person deciding, for the case timeline; `api` when
    /// absent.
    actor: Option<String>,
}

/// Applies a person's decision to a parked run and continues it. Returns the
/// run as it is afterwards: finished, waiting, or parked again.
async fn resume_parked_run(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: ResumeRequest = json_body(
        &body,
        "{\"decision\": \"retry\" | \"skip\" | \"fail\", \"actor\": \"NAME\"}",
    )?;
    let decision = ParkedDecision::parse(&request.decision).ok_or_else(|| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_decision",
        message: format!(
            "decision {:?} is not one of retry, skip, fail",
            request.decision
        ),
    })?;
    let actor = request.actor.unwrap_or_else(|| "api".to_string());
    if state.engine.store().run(&id).map_err(internal)?.is_none() {
        return Err(not_found("run", &id));
    }
    let run = state
        .engine
        .resume_parked(&id, decision, &actor)
        .await
        .map_err(engine_error)?;
    Ok(Json(serde_json::to_value(run).map_err(internal)?))
}

/// Parses a JSON request body whatever its content type; `shape` shows
/// what to send in the error.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|error| ApiError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_body",
        message: format!("the request body is invalid: {error}; send {shape}"),
    })
}

/// Maps an engine error to its HTTP status and stable code.
fn engine_error(error: EngineError) -> ApiError {
    let (status, code) = match &error {
        EngineError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        EngineError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        EngineError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        EngineError::Store(palisade_store::StoreError::NotFound { .. }) => {
            (StatusCode::NOT_FOUND, "not_found")
        }
        _ => return internal(error),
    };
    ApiError {
        status,
        code,
        message: error.to_string(),
    }
}

async fn list_approvals(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let pending = state.engine.pending_approvals().map_err(engine_error)?;
    Ok(Json(serde_json::to_value(pending).map_err(internal)?))
}

/// Body of `POST /v1/approvals/{run}/{step}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerRequest {
    /// `approve` or `reject`.
    decision: String,
    /// Response to the approval's form, when it has one.
    #[serde(default)]
    response: Value,
    /// Name of the person answering; `api` when absent.
    actor: Option<String>,
    /// Item position, for an approval inside a `for_each` step.
    item: Option<u32>,
}

/// Records a person's answer to an open approval and continues the run.
async fn answer_approval(
    State(state): State<Arc<AppState>>,
    Path((run, step)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let request: AnswerRequest = json_body(
        &body,
        "{\"decision\": \"approve\" | \"reject\", \"response\": {...}, \"actor\": \"NAME\"}",
    )?;
    let approve = match request.decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "invalid_decision",
                message: format!("decision {other:?} is not one of approve, reject"),
            });
        }
    };
    let answer = palisade_engine::Answer {
        approve,
        response: request.response,
        actor: request.actor.unwrap_or_else(|| "api".to_string()),
    };
    let run = state
        .engine
        .answer_approval(&run, &step, request.item, answer)
        .await
        .map_err(engine_error)?;
    Ok(Json(serde_json::to_value(run).map_err(internal)?))
}

/// Returns the live quota state of every plugin with quota rules or a
/// pause.
async fn list_quotas(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let quotas = state.caller.runtime.quotas().status();
    Ok(Json(serde_json::to_value(quotas).map_err(internal)?))
}
