//! Recorded HTTP responses that stand in for every upstream, for testing a
//! playbook before it acts: with fixtures in use, the host still checks
//! each request against the plugin's policy and quotas, then answers it
//! from the recording instead of sending it.
//!
//! A fixture directory holds `.json` files, each one exchange:
//!
//! ```json
//! {"request": {"method": "GET", "url": "https://www.virustotal.com/api/v3/files/275a..."},
//!  "response": {"status": 200, "headers": {"content-type": "application/json"},
//!               "body": {"data": {}}}}
//! ```
//!
//! `body` is JSON sent as it is written; `body_text` sends a string
//! unchanged instead. The method and the whole URL, query included, must
//! match; a request with no recording fails as a transport error that
//! names it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::bindings::palisade::plugin::http::Response;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Exchange {
    request: RecordedRequest,
    response: RecordedResponse,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedRequest {
    method: String,
    url: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordedResponse {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<Value>,
    body_text: Option<String>,
}

/// The recorded responses, by method and URL.
#[derive(Default)]
pub struct Fixtures {
    responses: BTreeMap<(String, String), Response>,
}

impl Fixtures {
    /// Reads every `.json` file of `dir`. The error names the file and what
    /// is wrong with it.
    pub fn load_dir(dir: &Path) -> Result<Self, String> {
        let entries = std::fs::read_dir(dir)
            .map_err(|error| format!("cannot read fixture directory {}: {error}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
            .collect();
        paths.sort();
        let mut fixtures = Self::default();
        for path in paths {
            let text = std::fs::read_to_string(&path)
                .map_err(|error| format!("cannot read fixture {}: {error}", path.display()))?;
            let exchange: Exchange = serde_json::from_str(&text).map_err(|error| {
                format!(
                    "fixture {} is invalid: {error}; write {{\"request\": {{\"method\", \"url\"}}, \"response\": {{\"status\", \"headers\", \"body\"}}}}",
                    path.display()
                )
            })?;
            let body = match (exchange.response.body, exchange.response.body_text) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "fixture {} has both `body` and `body_text`; give one",
                        path.display()
                    ));
                }
                (Some(json), None) => json.to_string().into_bytes(),
                (None, Some(text)) => text.into_bytes(),
                (None, None) => Vec::new(),
            };
            let response = Response {
                status: exchange.response.status,
                headers: exchange
                    .response
                    .headers
                    .into_iter()
                    .map(|(name, value)| (name.to_ascii_lowercase(), value))
                    .collect(),
                body,
            };
            let key = (
                exchange.request.method.to_ascii_uppercase(),
                exchange.request.url,
            );
            if fixtures.responses.insert(key.clone(), response).is_some() {
                return Err(format!(
                    "fixture {} records {} {} again; keep one recording per request",
                    path.display(),
                    key.0,
                    key.1
                ));
            }
        }
        Ok(fixtures)
    }

    /// Returns the recorded response to `method` `url`.
    pub(crate) fn answer(&self, method: &str, url: &str) -> Option<Response> {
        self.responses
            .get(&(method.to_ascii_uppercase(), url.to_string()))
            .cloned()
    }

    /// Number of recorded exchanges.
    pub fn len(&self) -> usize {
        self.responses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.responses.is_empty()
    }
}
