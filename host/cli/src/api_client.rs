//! The client side of the HTTP API, for commands given `--server URL`. It
//! sends the API token from `--token` or `PALISADE_TOKEN` as a bearer
//! token and turns error responses into messages that say what to fix.

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

/// A daemon at a base URL, with the token to send to it.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of the daemon at `base`, such as `http://127.0.0.1:8470`.
    /// Without a token, requests are sent without `Authorization`, which
    /// only `/v1/health` and `/v1/openapi.json` accept.
    pub fn new(base: &str, token: Option<&str>) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: token
                .map(str::trim)
                .filter(|token| !token.is_empty())
                .map(str::to_string),
            http: reqwest::Client::new(),
        }
    }

    /// Sends `GET path` and returns the JSON body of a success.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(Method::GET, path, &[], None).await
    }

    /// Sends `method path` with `body` as raw bytes and the extra
    /// `headers`, and returns the JSON body of a success, as
    /// [`ApiClient::send`] does.
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        self.finish(method, path, request.body(body)).await
    }

    /// Sends `method path` with the query pairs and, when given, a JSON
    /// body, and returns the JSON body of a success. A response that is
    /// not a success becomes an error with the daemon's code and message.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body)?);
        }
        self.finish(method, path, request).await
    }

    /// Sends `request` and returns the JSON body of a success; a response
    /// that is not a success becomes an error with the daemon's code and
    /// message.
    async fn finish(
        &self,
        method: Method,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the daemon at {}; is `palisade serve` running there?",
                self.base
            )
        })?;
        let status = response.status();
        let text = response.text().await?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .with_context(|| format!("{method} {url} returned a body that is not JSON"));
        }
        let error: Option<Value> = serde_json::from_str(&text).ok();
        let code = error
            .as_ref()
            .and_then(|value| value.pointer("/error/code"))
            .and_then(Value::as_str);
        let message = error
            .as_ref()
            .and_then(|value| value.pointer("/error/message"))
            .and_then(Value::as_str)
            .unwrap_or(&text);
        let hint = match (code, &self.token) {
            (Some("unauthenticated"), None) => {
                "; pass an API token with `--token` or the PALISADE_TOKEN environment variable"
            }
            _ => "",
        };
        anyhow::bail!(
            "the daemon rejected {method} {path} with {status} {}: {message}{hint}",
            code.unwrap_or("(no code)")
        )
    }
}
