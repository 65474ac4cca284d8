//! A ticketing system on 127.0.0.1 for the `ticketing` plugin, which
//! deduplicates on the `Idempotency-Key` header as many real APIs do, and
//! records every request so tests can count side effects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{cache_dir, plugins_dir};

/// Bearer token the tests configure for the plugin.
pub const TICKET_TOKEN: &str = "ticket-token-2b7e91d04c";

/// How the server answers.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Answer this many requests with 503 before answering normally.
    pub fail_first: usize,
    /// Never answer this many requests (the connection stays open), so a
    /// test can stop the daemon while the step is in flight.
    pub hang_first: usize,
    /// Wait up to this long, at random, before each answer.
    pub max_delay: Duration,
    /// Wait this long before each answer, on top of `max_delay`.
    pub delay: Duration,
    /// Answer every request whose number (from 1) is a multiple of this
    /// with 503; 0 never does.
    pub fail_every: usize,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct TicketRequest {
    pub idempotency_key: Option<String>,
    pub alert_id: String,
    pub authorized: bool,
}

#[derive(Default)]
pub struct Log {
    pub requests: Vec<TicketRequest>,
    /// Tickets created, by idempotency key: the side effects that happened.
    pub tickets: BTreeMap<String, String>,
    behaviour: Behaviour,
    in_flight: usize,
    max_in_flight: usize,
}

impl Log {
    /// Distinct idempotency keys under which a ticket was created for each
    /// alert. More than one for an alert is a duplicated side effect.
    pub fn keys_by_alert(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut keys: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for request in &self.requests {
            if let Some(key) = &request.idempotency_key
                && self.tickets.contains_key(key)
            {
                keys.entry(request.alert_id.clone())
                    .or_default()
                    .insert(key.clone());
            }
        }
        keys
    }
}

pub struct TicketServer {
    pub address: SocketAddr,
    pub log: Arc<Mutex<Log>>,
}

impl TicketServer {
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn requests(&self) -> Vec<TicketRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Largest number of requests the server was handling at once.
    pub fn max_in_flight(&self) -> usize {
        self.log.lock().unwrap().max_in_flight
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.log.lock().unwrap().behaviour = behaviour;
    }
}

/// Starts the server on an ephemeral loopback port, on the current tokio
/// runtime.
pub async fn start_ticket_server(behaviour: Behaviour) -> TicketServer {
    let log = Arc::new(Mutex::new(Log {
        behaviour,
        ..Log::default()
    }));
    let app = axum::Router::new()
        .route("/api/v1/tickets", post(open_ticket))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TicketServer { address, log }
}

async fn open_ticket(
    State(log): State<Arc<Mutex<Log>>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let authorized = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        == Some(&format!("Bearer {TICKET_TOKEN}"));
    let alert_id = body["alert_id"].as_str().unwrap_or_default().to_string();
    let (hang, fail, delay) = {
        let mut log = log.lock().unwrap();
        log.requests.push(TicketRequest {
            idempotency_key: key.clone(),
            alert_id,
            authorized,
        });
        let seen = log.requests.len();
        let behaviour = &log.behaviour;
        let delay = if behaviour.max_delay.is_zero() {
            Duration::ZERO
        } else {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u128;
            Duration::from_nanos((nanos % behaviour.max_delay.as_nanos().max(1)) as u64)
        };
        let periodic = behaviour.fail_every > 0 && seen % behaviour.fail_every == 0;
        let delay = delay + behaviour.delay;
        let result = (
            seen <= behaviour.hang_first,
            seen <= behaviour.hang_first + behaviour.fail_first || periodic,
            delay,
        );
        log.in_flight += 1;
        log.max_in_flight = log.max_in_flight.max(log.in_flight);
        result
    };
    if hang {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(delay).await;
    log.lock().unwrap().in_flight -= 1;
    if fail {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    if !authorized {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let Some(key) = key else {
        return (StatusCode::BAD_REQUEST, "Idempotency-Key is required").into_response();
    };
    let mut log = log.lock().unwrap();
    let count = log.tickets.len();
    let (status, id) = match log.tickets.get(&key) {
        Some(id) => (StatusCode::OK, id.clone()),
        None => {
            let id = format!("T-{}", count + 1);
            log.tickets.insert(key, id.clone());
            (StatusCode::CREATED, id)
        }
    };
    (status, Json(json!({ "id": id }))).into_response()
}

/// Writes a `palisade.toml` in `dir` that loads the playbooks in
/// `playbooks` and grants the ticketing plugin the server at `origin`, and
/// returns its path. The database goes in `dir/data`, and the daemon takes
/// [`super::TEST_ADMIN_TOKEN`].
pub fn write_ticketing_config(dir: &Path, playbooks: &Path, origin: &str) -> PathBuf {
    std::fs::write(dir.join("ticket-token"), TICKET_TOKEN).unwrap();
    let text = format!(
        r#"data_dir = "{data}"
cache_dir = "{cache}"
plugins_dir = "{plugins}"
playbooks_dir = "{playbooks}"

{trust}
[secrets.ticketing-token]
file = "ticket-token"

[plugins.ticketing]
http_origins = ["{origin}"]
config = {{ base_url = "{origin}" }}

[[plugins.ticketing.secrets]]
name = "ticketing-token"
origins = ["{origin}"]
"#,
        data = dir.join("data").display(),
        cache = cache_dir().display(),
        plugins = plugins_dir().display(),
        playbooks = playbooks.display(),
        trust = super::trust_table(),
    );
    let path = dir.join("palisade.toml");
    std::fs::write(&path, text + &super::api_tokens_table()).unwrap();
    path
}
