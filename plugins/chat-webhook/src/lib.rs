//! Chat plugin: posts a message to a channel through an incoming webhook,
//! in the JSON shape Slack and Mattermost accept: `{"text": ...}`, with an
//! optional `channel`.
//!
//! The operator sets the webhook URL as the `webhook_url` setting and
//! grants its origin. When the chat system wants a bearer token, the host
//! places the secret `chat-webhook-token` in the `Authorization` header.
//! A webhook URL that carries its credential in the path, as Slack's does,
//! appears in the step's record of HTTP calls, so prefer a token where the
//! chat system offers one.

use palisade_sdk::http::{Request, map_error};
use palisade_sdk::{
    Capabilities, Plugin, PluginError, PluginInfo, RateLimit, UpstreamFailure, Value, action,
    config, json, require_str,
};

/// Setting that contains the webhook URL.
const URL_SETTING: &str = "webhook_url";
/// Secret the host places in the `Authorization` header, when granted.
const TOKEN_SECRET: &str = "chat-webhook-token";
/// Maximum message length in characters; longer text is cut.
const MAX_TEXT_CHARS: usize = 4_000;

struct ChatWebhook;

impl Plugin for ChatWebhook {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "chat-webhook".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "Posts messages to a chat channel through an incoming webhook."
                .to_string(),
            actions: vec![action(
                "post-message",
                "Posts a text message, such as an approval question, to the configured channel.",
                json!({
                    "type": "object",
                    "required": ["text"],
                    "properties": {
                        "text": {"type": "string", "minLength": 1},
                        "channel": {"type": "string"},
                        "use_token": {"type": "boolean"}
                    }
                }),
                json!({
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "integer"}}
                }),
                true,
            )],
            capabilities: Capabilities {
                http_origins: vec![format!("config:{URL_SETTING}")],
                secrets: vec![TOKEN_SECRET.to_string()],
                key_value: false,
                config: vec![URL_SETTING.to_string()],
            },
        }
    }

    fn invoke(action: &str, input: Value) -> Result<Value, PluginError> {
        match action {
            "post-message" => post_message(&input),
            other => Err(PluginError::UnknownAction(other.to_string())),
        }
    }
}

fn post_message(input: &Value) -> Result<Value, PluginError> {
    let url = webhook_url(config::get(URL_SETTING).as_deref())?;
    let text = require_str(input, "text")?;
    if text.trim().is_empty() {
        return Err(PluginError::BadInput("`text` is empty".to_string()));
    }
    let body = message_body(text, input.get("channel").and_then(Value::as_str));
    let mut request = Request::new("POST", &url)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes());
    if input.get("use_token").and_then(Value::as_bool) == Some(true) {
        request = request.secret_header(TOKEN_SECRET, "authorization", "Bearer ");
    }
    // The URL stays out of error messages, since it may carry a credential.
    let response = request
        .send()
        .map_err(|error| map_error("the chat webhook", error))?;
    match response.status {
        200..=299 => Ok(json!({ "status": response.status })),
        429 => Err(PluginError::RateLimited(RateLimit {
            retry_after_ms: palisade_sdk::http::header_value(&response, "retry-after")
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(|seconds| seconds.saturating_mul(1000)),
            message: "the chat webhook answered 429 Too Many Requests".to_string(),
        })),
        status => Err(PluginError::Upstream(UpstreamFailure {
            status: Some(status),
            message: format!(
                "the chat webhook answered {status}: {}",
                String::from_utf8_lossy(&response.body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ),
        })),
    }
}

/// Builds the webhook body.
fn message_body(text: &str, channel: Option<&str>) -> Value {
    let text: String = text.chars().take(MAX_TEXT_CHARS).collect();
    match channel {
        Some(channel) if !channel.is_empty() => json!({ "text": text, "channel": channel }),
        _ => json!({ "text": text }),
    }
}

fn webhook_url(configured: Option<&str>) -> Result<String, PluginError> {
    config::check_http_url(
        URL_SETTING,
        configured,
        "the channel's incoming webhook URL",
    )
}

palisade_sdk::export_plugin!(ChatWebhook);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_text_and_optional_channel() {
        assert_eq!(message_body("hi", None), json!({"text": "hi"}));
        assert_eq!(
            message_body("hi", Some("#soc")),
            json!({"text": "hi", "channel": "#soc"})
        );
        let long = "x".repeat(5_000);
        assert_eq!(
            message_body(&long, None)["text"].as_str().unwrap().len(),
            MAX_TEXT_CHARS
        );
    }

    #[test]
    fn webhook_url_is_required() {
        assert!(webhook_url(Some("http://127.0.0.1:9/hook")).is_ok());
        for configured in [None, Some(""), Some("hooks.example"), Some("http://")] {
            let error = webhook_url(configured).unwrap_err();
            assert!(
                matches!(&error, PluginError::Internal(message) if message.contains("webhook_url")),
                "{configured:?} gave {error:?}"
            );
        }
    }
}
