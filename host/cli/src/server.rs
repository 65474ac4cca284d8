//! The daemon: alerts in over HTTP, playbook runs in the background, cases
//! and runs out over HTTP.
//!
//! `POST /v1/alerts` responds only after the alerts are stored and flushed to
//! disk. Runs happen afterwards on worker tasks; an alert whose runs had not
//! finished when the daemon stopped is resumed at the next start.
//!
//! Every route is listed in [`crate::auth::ROUTES`] with the permission it
//! needs. A route added here needs its line there too, or only admin
//! tokens can use it. The OpenAPI document, [`OPENAPI_DOCUMENT`], describes
//! every route of that table.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router, middleware};
use palisade_engine::{CaseService, Engine, EngineError, ParkedDecision};
use palisade_model::{Alert, parse_alert_bytes};
use palisade_runtime::SecretSource;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub(crate) use crate::api_error::{ApiError, internal};
use crate::api_error::{Body, ErrorCode, MAX_ALERT_BODY_BYTES, MAX_BODY_BYTES};
use crate::auth::{self, Identity};
use crate::config::{Config, ConfiguredSecrets};
use crate::host::{self, RuntimeCaller};
use crate::playbook_api::{self, PlaybookCatalog, PlaybookState};
use crate::plugin_api;
use crate::token_api::{self, TokenRegistry, TokenState};
use crate::webhook::Webhooks;

/// The OpenAPI 3.1 document of the API, served at `GET /v1/openapi.json`.
pub const OPENAPI_DOCUMENT: &str = include_str!("openapi.json");

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
    tokens: Arc<TokenRegistry>,
    webhooks: Webhooks,
    playbooks: Arc<PlaybookCatalog>,
    registry: Arc<crate::registry::Registry>,
}

impl axum::extract::FromRef<Arc<AppState>> for crate::plugin_api::PluginState {
    fn from_ref(state: &Arc<AppState>) -> Self {
        Self(state.registry.clone())
    }
}

impl axum::extract::FromRef<Arc<AppState>> for crate::case_api::CaseState {
    fn from_ref(state: &Arc<AppState>) -> Self {
        Self(state.cases.clone())
    }
}

impl axum::extract::FromRef<Arc<AppState>> for TokenState {
    fn from_ref(state: &Arc<AppState>) -> Self {
        Self(state.tokens.clone())
    }
}

impl axum::extract::FromRef<Arc<AppState>> for PlaybookState {
    fn from_ref(state: &Arc<AppState>) -> Self {
        Self(state.playbooks.clone())
    }
}

/// Runs the daemon on `listen` until `shutdown` completes. Prints
/// `listening on ADDRESS` to standard output once the socket is bound.
/// With `[api.tls]` the daemon serves HTTPS only.
pub async fn serve(
    config: &Config,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sla = config.sla.policy().map_err(anyhow::Error::msg)?;
    // TLS files are read before anything starts, so a bad path fails at
    // once.
    let tls = config
        .api
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?;
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

    let tokens = Arc::new(TokenRegistry::new(host.store.clone(), config.api.tokens()));
    if tokens.is_empty()? {
        tracing::warn!(
            "no API token exists, so every route but /v1/health, /v1/openapi.json and signed webhooks answers 401; stop the daemon and run `{}`",
            auth::CREATE_ADMIN_HINT
        );
    }
    let secrets: Arc<dyn SecretSource> = Arc::new(ConfiguredSecrets::new(
        config,
        config.stored_secrets_key()?,
        engine.store().clone(),
    ));
    let state = Arc::new(AppState {
        engine: engine.clone(),
        caller: host.caller.clone(),
        queue,
        cases: Arc::new(CaseService::new(engine.store().clone(), sla)),
        tokens: tokens.clone(),
        webhooks: Webhooks::new(&config.api, secrets),
        playbooks: Arc::new(PlaybookCatalog::new(
            engine.playbooks(),
            host.caller.clone(),
        )),
        registry: host.registry.clone(),
    });
    let app = router(state, tokens);
    // Operators who deploy by copying files into the plugin directory get
    // each new file installed as `palisade plugin install` would.
    let _watcher =
        crate::registry::watch_directory(host.registry.clone(), config.plugins_dir.clone())
            .with_context(|| {
                format!(
                    "cannot watch plugin directory {}",
                    config.plugins_dir.display()
                )
            })?;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}; is another daemon running there?"))?;
    let address = listener.local_addr()?;
    println!("listening on {address}");
    tracing::info!(%address, tls = tls.is_some(), "daemon started");
    if tls.is_none() && !address.ip().is_loopback() {
        tracing::warn!(%address, "serving plain HTTP on a non-loopback address, so bearer tokens cross the network unencrypted; set `[api.tls]`");
    }
    match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls)?;
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }

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

/// Time after which a run that is still due is queued again. The worker
/// that took it may have found it claimed by another task (such as the
/// start's recovery checking it a moment before its wake time) and left
/// it, so a due run must not be skipped for good.
const REQUEUE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Queues waiting runs when their stored wake time comes. A run queued for
/// a wake time is queued again only if it is still due [`REQUEUE_AFTER`]
/// later; resuming a run that already moved on does nothing.
async fn wake_due_runs(engine: Arc<Engine<RuntimeCaller>>, queue: mpsc::WeakSender<Work>) {
    let mut queued: std::collections::HashMap<
        String,
        (chrono::DateTime<chrono::Utc>, std::time::Instant),
    > = std::collections::HashMap::new();
    loop {
        let due = match engine.due_runs(1_000) {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "reading due runs failed");
                Vec::new()
            }
        };
        queued.retain(|id, (at, _)| {
            due.iter()
                .any(|(due_id, due_at)| due_id == id && due_at == at)
        });
        for (run_id, at) in due {
            if queued
                .get(&run_id)
                .is_some_and(|(queued_at, when)| *queued_at == at && when.elapsed() < REQUEUE_AFTER)
            {
                continue;
            }
            let Some(queue) = queue.upgrade() else { return };
            if queue.send(Work::Run(run_id.clone())).await.is_err() {
                return;
            }
            queued.insert(run_id, (at, std::time::Instant::now()));
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

/// Builds the router: every route with its handler, the permission check
/// of [`auth::authenticate`] around all of them, and the body limits. The
/// alert routes take up to [`MAX_ALERT_BODY_BYTES`], every other route
/// [`MAX_BODY_BYTES`].
fn router(state: Arc<AppState>, tokens: Arc<TokenRegistry>) -> Router {
    let alert_limit = DefaultBodyLimit::max(MAX_ALERT_BODY_BYTES);
    Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(serve_metrics))
        .route("/v1/openapi.json", get(openapi_document))
        .route("/v1/alerts", post(ingest).layer(alert_limit))
        .route(
            "/v1/webhooks/{source}",
            post(receive_webhook).layer(alert_limit),
        )
        .route("/v1/runs", get(list_runs))
        .route("/v1/runs/{id}", get(show_run))
        .route("/v1/runs/{id}/resume", post(resume_parked_run))
        .route("/v1/approvals", get(list_approvals))
        .route("/v1/approvals/{run}/{step}", post(answer_approval))
        .route("/v1/quotas", get(list_quotas))
        .route("/v1/playbooks", get(playbook_api::list_playbooks))
        .route("/v1/playbooks/check", post(playbook_api::check_playbook))
        .route("/v1/playbooks/{name}", get(playbook_api::show_playbook))
        .route(
            "/v1/tokens",
            get(token_api::list_tokens).post(token_api::create_token),
        )
        .route("/v1/tokens/{name}", delete(token_api::revoke_token))
        .route(
            "/v1/plugins",
            get(plugin_api::list_plugins)
                .post(plugin_api::install_plugin)
                .layer(DefaultBodyLimit::max(plugin_api::MAX_PLUGIN_BYTES)),
        )
        .route("/v1/plugins/{name}", get(plugin_api::show_plugin))
        .route(
            "/v1/plugins/{name}/history",
            get(plugin_api::plugin_history),
        )
        .route(
            "/v1/plugins/{name}/activate",
            post(plugin_api::activate_plugin),
        )
        .route(
            "/v1/plugins/{name}/rollback",
            post(plugin_api::rollback_plugin),
        )
        .merge(crate::case_api::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(tokens, auth::authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("{what} {id:?} not found"))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no route {}; the API is under /v1, and `GET /v1/openapi.json` lists its routes",
            uri.path()
        ),
    )
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Renders the Prometheus metrics (see [`crate::metrics`]) with the queue
/// depth and the runtime's plugin versions and quota waits as they are
/// now.
async fn serve_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let queue_depth = state.queue.max_capacity() - state.queue.capacity();
    let live = crate::metrics::LiveState::read(&state.caller.runtime, queue_depth);
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::global().render(&live),
    )
}

async fn openapi_document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
}

/// Accepts a JSON document, a JSON array or JSON lines of alerts. Returns
/// 202 with the accepted alerts and their cases, and the rejected records
/// with their line and reason; 400 when nothing was accepted.
async fn ingest(
    State(state): State<Arc<AppState>>,
    Body(body): Body,
) -> Result<Response, ApiError> {
    ingest_batch(&state, body).await
}

/// Accepts an alert batch like `POST /v1/alerts` once the request's HMAC
/// signature is checked against webhook `source` (see [`crate::webhook`]).
async fn receive_webhook(
    State(state): State<Arc<AppState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let now = chrono::Utc::now().timestamp();
    state.webhooks.verify(&source, &headers, &body, now)?;
    tracing::debug!(webhook = %source, bytes = body.len(), "signed webhook request accepted");
    ingest_batch(&state, body).await
}

async fn ingest_batch(state: &AppState, body: Bytes) -> Result<Response, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::EmptyBody,
            "the request body is empty; send alerts as JSON, JSON lines or EVE lines",
        ));
    }

    // Parsing and the database writes are blocking work; keep them off the
    // threads that serve other requests.
    let engine = state.engine.clone();
    let outcome = tokio::task::spawn_blocking(move || accept_batch(&engine, &body))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    crate::metrics::global().record_alerts_ingested(outcome.accepted.len());
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
    /// Name of the person deciding. It must be the name of the request's
    /// token, which is the actor when this is absent.
    actor: Option<String>,
}

/// Applies a person's decision to a parked run and continues it. Returns the
/// run as it is afterwards: finished, waiting, or parked again. The
/// token's name is recorded as who decided.
async fn resume_parked_run(
    State(state): State<Arc<AppState>>,
    identity: Identity,
    Path(id): Path<String>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let request: ResumeRequest =
        json_body(&body, "{\"decision\": \"retry\" | \"skip\" | \"fail\"}")?;
    let decision = ParkedDecision::parse(&request.decision).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidDecision,
            format!(
                "decision {:?} is not one of retry, skip, fail",
                request.decision
            ),
        )
    })?;
    let actor = identity.actor(request.actor.as_deref())?;
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
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("the request body is invalid: {error}; send {shape}"),
        )
    })
}

/// Maps an engine error to its HTTP status and stable code.
fn engine_error(error: EngineError) -> ApiError {
    let code = match &error {
        EngineError::Conflict(_) => ErrorCode::Conflict,
        EngineError::Forbidden(_) => ErrorCode::Forbidden,
        EngineError::Invalid(_) => ErrorCode::Invalid,
        EngineError::Store(palisade_store::StoreError::NotFound { .. }) => ErrorCode::NotFound,
        _ => return internal(error),
    };
    ApiError::new(code, error.to_string())
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
    /// Name of the person answering. It must be the name of the request's
    /// token, which is the actor when this is absent.
    actor: Option<String>,
    /// Item position, for an approval inside a `for_each` step.
    item: Option<u32>,
}

/// Records a person's answer to an open approval and continues the run.
/// The token's name is who answers, so an approval that names its
/// approvers takes answers only from tokens of those names.
async fn answer_approval(
    State(state): State<Arc<AppState>>,
    identity: Identity,
    Path((run, step)): Path<(String, String)>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let request: AnswerRequest = json_body(
        &body,
        "{\"decision\": \"approve\" | \"reject\", \"response\": {...}}",
    )?;
    let approve = match request.decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => {
            return Err(ApiError::new(
                ErrorCode::InvalidDecision,
                format!("decision {other:?} is not one of approve, reject"),
            ));
        }
    };
    let answer = palisade_engine::Answer {
        approve,
        response: request.response,
        actor: identity.actor(request.actor.as_deref())?,
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
