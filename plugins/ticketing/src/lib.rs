//! Ticketing plugin: opens a ticket in a REST ticketing system for a case.
//!
//! `open-ticket` sends `POST {base_url}/api/v1/tickets` with a JSON body
//! (title, description, severity, case and alert ids, observables) and
//! expects `201` or `200` with a JSON object holding the ticket `id`. The
//! step's idempotency key goes in the body as `idempotency_key` and, by the
//! host, in the `Idempotency-Key` header, so a system that deduplicates on
//! it answers a retried step with the ticket it already opened instead of
//! opening a second one.
//!
//! The operator sets `base_url` (there is no default upstream) and grants
//! its origin; the bearer token is the secret `ticketing-token`, placed by
//! the host in the `Authorization` header.

use palisade_sdk::http::{Request, Response, header_value, map_error};
use palisade_sdk::{
    Capabilities, Plugin, PluginError, PluginInfo, RateLimit, UpstreamFailure, Value, action,
    config, invocation, json, require_str,
};

/// Setting that contains the ticketing system's base URL.
const BASE_URL_SETTING: &str = "base_url";
/// Secret the host places in the `Authorization` header.
const TOKEN_SECRET: &str = "ticketing-token";
/// Maximum title length in characters; longer titles are cut.
const MAX_TITLE_CHARS: usize = 200;

struct Ticketing;

impl Plugin for Ticketing {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "ticketing".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Opens tickets in a REST ticketing system, once per playbook step."
                .to_string(),
            actions: vec![action(
                "open-ticket",
                "Opens a ticket for a case and returns its id; a retried step gets the same ticket from a system that honours idempotency keys.",
                json!({
                    "type": "object",
                    "required": ["title"],
                    "properties": {
                        "title": {"type": "string", "minLength": 1},
                        "description": {"type": "string"},
                        "severity": {"type": "string"},
                        "case_id": {"type": "string"},
                        "alert_id": {"type": "string"},
                        "observables": {"type": "array"}
                    }
                }),
                json!({
                    "type": "object",
                    "required": ["ticket_id", "status"],
                    "properties": {
                        "ticket_id": {"type": "string"},
                        "status": {"type": "integer"},
                        "url": {"type": "string"}
                    }
                }),
                true,
            )],
            capabilities: Capabilities {
                http_origins: vec![format!("config:{BASE_URL_SETTING}")],
                secrets: vec![TOKEN_SECRET.to_string()],
                key_value: false,
                config: vec![BASE_URL_SETTING.to_string()],
            },
        }
    }

    fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
        match action {
            "open-ticket" => open_ticket(&input),
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

fn open_ticket(input: &Value) -> Result<Value, PluginError> {
    let base_url = base_url(config::get(BASE_URL_SETTING).as_deref())?;
    let title = require_str(input, "title")?.trim();
    if title.is_empty() {
        return Err(PluginError::BadInput("`title` is empty".to_string()));
    }
    let body = ticket_body(input, title, invocation::idempotency_key());
    let url = format!("{base_url}/api/v1/tickets");
    let response = Request::new("POST", &url)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .secret_header(TOKEN_SECRET, "authorization", "Bearer ")
        .body(body.to_string().into_bytes())
        .send()
        .map_err(|error| map_error(&url, error))?;
    read_ticket(&url, &response)
}

/// Builds the request body from the step input.
fn ticket_body(input: &Value, title: &str, idempotency_key: Option<String>) -> Value {
    let title: String = title.chars().take(MAX_TITLE_CHARS).collect();
    let text = |name: &str| input.get(name).and_then(Value::as_str).unwrap_or_default();
    json!({
        "title": title,
        "description": text("description"),
        "severity": text("severity"),
        "case_id": text("case_id"),
        "alert_id": text("alert_id"),
        "observables": input.get("observables").cloned().unwrap_or(json!([])),
        "idempotency_key": idempotency_key,
    })
}

/// Returns the base URL without trailing slashes.
fn base_url(configured: Option<&str>) -> Result<String, PluginError> {
    let url = config::check_http_url(
        BASE_URL_SETTING,
        configured,
        "the ticketing system's http or https URL",
    )?;
    Ok(url.trim_end_matches('/').to_string())
}

/// Maps the ticketing system's answer to the action output.
fn read_ticket(url: &str, response: &Response) -> Result<Value, PluginError> {
    let status = response.status;
    let upstream = |message: String| {
        PluginError::Upstream(UpstreamFailure {
            status: Some(status),
            message,
        })
    };
    match status {
        200 | 201 => {}
        429 => {
            let retry_after_ms = header_value(response, "retry-after")
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(|seconds| seconds.saturating_mul(1000));
            return Err(PluginError::RateLimited(RateLimit {
                retry_after_ms,
                message: format!("{url} answered 429 Too Many Requests"),
            }));
        }
        400 | 422 => {
            return Err(PluginError::BadInput(format!(
                "{url} rejected the ticket with {status}: {}",
                snippet(&response.body)
            )));
        }
        _ => return Err(upstream(format!("{url} answered {status}"))),
    }
    let body: Value = serde_json::from_slice(&response.body).map_err(|error| {
        upstream(format!(
            "{url} answered {status} with invalid JSON: {error}"
        ))
    })?;
    let ticket_id = match body.get("id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        Some(Value::Number(id)) => id.to_string(),
        _ => {
            return Err(upstream(format!(
                "{url} answered {status} without a ticket `id`"
            )));
        }
    };
    let mut output = json!({ "ticket_id": ticket_id, "status": status });
    if let Some(link) = body.get("url").and_then(Value::as_str) {
        output["url"] = json!(link);
    }
    Ok(output)
}

/// Returns the start of a response body, for error messages.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

palisade_sdk::export_plugin!(Ticketing);

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str, headers: &[(&str, &str)]) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn base_url_is_required_and_trimmed() {
        assert_eq!(
            base_url(Some("http://127.0.0.1:9000/")).unwrap(),
            "http://127.0.0.1:9000"
        );
        for configured in [None, Some(""), Some("tickets.example"), Some("https://")] {
            let error = base_url(configured).unwrap_err();
            assert!(
                matches!(&error, PluginError::Internal(message) if message.contains("`base_url`")),
                "{configured:?} gave {error:?}"
            );
        }
    }

    #[test]
    fn body_carries_the_key_and_a_capped_title() {
        let input =
            json!({"title": "x", "case_id": "C00000001", "observables": [{"type": "ipv4"}]});
        let long = "t".repeat(500);
        let body = ticket_body(&input, &long, Some("palisade-abc".into()));
        assert_eq!(body["idempotency_key"], "palisade-abc");
        assert_eq!(body["case_id"], "C00000001");
        assert_eq!(body["title"].as_str().unwrap().len(), MAX_TITLE_CHARS);
        assert_eq!(body["observables"][0]["type"], "ipv4");
        assert!(ticket_body(&json!({}), "x", None)["idempotency_key"].is_null());
    }

    #[test]
    fn responses_map_to_outputs_and_errors() {
        let url = "http://127.0.0.1:9000/api/v1/tickets";
        let created = read_ticket(url, &response(201, r#"{"id":"T-7","url":"u"}"#, &[])).unwrap();
        assert_eq!(
            created,
            json!({"ticket_id": "T-7", "status": 201, "url": "u"})
        );
        let numeric = read_ticket(url, &response(200, r#"{"id":42}"#, &[])).unwrap();
        assert_eq!(numeric["ticket_id"], "42");

        let limited = read_ticket(url, &response(429, "", &[("retry-after", "3")])).unwrap_err();
        assert!(
            matches!(&limited, PluginError::RateLimited(limit) if limit.retry_after_ms == Some(3000)),
            "{limited:?}"
        );
        let refused = read_ticket(url, &response(422, "title too long", &[])).unwrap_err();
        assert!(
            matches!(&refused, PluginError::BadInput(message) if message.contains("title too long")),
            "{refused:?}"
        );
        for (status, body) in [(500, "{}"), (201, "not json"), (201, r#"{"id":""}"#)] {
            let error = read_ticket(url, &response(status, body, &[])).unwrap_err();
            assert!(
                matches!(&error, PluginError::Upstream(failure) if failure.status == Some(status)),
                "{status} {body} gave {error:?}"
            );
        }
    }
}
