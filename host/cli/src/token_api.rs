//! API tokens: the registry over the database and the configuration,
//! which `palisade token` and the daemon share, and the `/v1/tokens`
//! routes.
//!
//! - `GET /v1/tokens` lists names, roles, creation times and sources,
//!   never hashes;
//! - `POST /v1/tokens` with `{"name", "role"}` creates a token and returns
//!   it once, in `token`;
//! - `DELETE /v1/tokens/{name}` revokes a stored token.

use std::fmt;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use palisade_store::{ApiTokenRecord, AuditEvent, SledStore, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_config::ConfiguredToken;
use crate::api_error::{ApiError, Body, ErrorCode, internal};
use crate::auth::{Identity, Role, check_token_name, generate_token, token_sha256};

/// Storage location of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// The database: made by `palisade token create` or `POST /v1/tokens`.
    Database,
    /// `[[api.tokens]]` in palisade.toml.
    Config,
}

/// A token as listed: never its hash.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    /// When it was created; unknown for configured tokens.
    pub created_at: Option<chrono::DateTime<Utc>>,
    pub source: TokenSource,
}

/// Failure of a token change.
#[derive(Debug)]
pub enum TokenError {
    InvalidName(String),
    /// A token of this name exists.
    NameTaken(String),
    /// The token is configured in palisade.toml, so the API cannot remove
    /// it.
    Configured(String),
    NotFound(String),
    Store(StoreError),
    Other(anyhow::Error),
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::InvalidName(message) => f.write_str(message),
            TokenError::NameTaken(name) => write!(
                f,
                "a token named {name:?} exists; revoke it first or choose another name"
            ),
            TokenError::Configured(name) => write!(
                f,
                "token {name:?} is configured in palisade.toml; remove its `[[api.tokens]]` entry and restart the daemon"
            ),
            TokenError::NotFound(name) => write!(
                f,
                "no token is named {name:?}; `palisade token list` shows the tokens"
            ),
            TokenError::Store(error) => error.fmt(f),
            TokenError::Other(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for TokenError {}

impl From<StoreError> for TokenError {
    fn from(error: StoreError) -> Self {
        TokenError::Store(error)
    }
}

impl From<anyhow::Error> for TokenError {
    fn from(error: anyhow::Error) -> Self {
        TokenError::Other(error)
    }
}

/// The tokens of the database and of the configuration.
pub struct TokenRegistry {
    store: Arc<SledStore>,
    configured: Vec<ConfiguredToken>,
}

impl TokenRegistry {
    pub fn new(store: Arc<SledStore>, configured: Vec<ConfiguredToken>) -> Self {
        Self { store, configured }
    }

    /// Finds the token whose hash matches `token`. Every hash is compared
    /// in constant time, and all of them are compared, so the time taken
    /// does not show which one matched. A database record with an unknown
    /// role matches no request.
    pub fn identify(&self, token: &str) -> Result<Option<Identity>, StoreError> {
        let presented = Sha256::digest(token.as_bytes());
        let mut found = None;
        let stored = self.store.api_tokens()?;
        let database = stored.iter().filter_map(|record| {
            let role = Role::parse(&record.role);
            if role.is_none() {
                tracing::warn!(token.name = %record.name, role = %record.role, "stored API token has an unknown role and is ignored");
            }
            Some((record.name.as_str(), role?, record.sha256.as_str()))
        });
        let configured = self
            .configured
            .iter()
            .map(|token| (token.name.as_str(), token.role, token.sha256.as_str()));
        for (name, role, sha256) in database.chain(configured) {
            let expected = hex::decode(sha256).unwrap_or_default();
            if bool::from(expected.as_slice().ct_eq(presented.as_slice())) && found.is_none() {
                found = Some(Identity {
                    name: name.to_string(),
                    role,
                });
            }
        }
        Ok(found)
    }

    /// Returns whether no token exists at all, so no protected route can
    /// be used.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.configured.is_empty() && self.store.api_tokens()?.is_empty())
    }

    /// Lists the configured tokens, then the stored ones, by name.
    pub fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let mut tokens: Vec<TokenInfo> = self
            .configured
            .iter()
            .map(|token| TokenInfo {
                name: token.name.clone(),
                role: token.role,
                created_at: None,
                source: TokenSource::Config,
            })
            .collect();
        for record in self.store.api_tokens()? {
            let Some(role) = Role::parse(&record.role) else {
                continue;
            };
            tokens.push(TokenInfo {
                name: record.name,
                role,
                created_at: Some(record.created_at),
                source: TokenSource::Database,
            });
        }
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tokens)
    }

    /// Creates a token named `name` with `role`, stores its hash, flushes
    /// and records `token_created` in the audit log with `actor`. Returns
    /// the token, which exists nowhere else afterwards.
    pub fn create(
        &self,
        name: &str,
        role: Role,
        actor: &str,
    ) -> Result<(String, TokenInfo), TokenError> {
        check_token_name(name).map_err(TokenError::InvalidName)?;
        if self.configured.iter().any(|token| token.name == name) {
            return Err(TokenError::NameTaken(name.to_string()));
        }
        let token = generate_token()?;
        let record = ApiTokenRecord {
            name: name.to_string(),
            role: role.as_str().to_string(),
            sha256: token_sha256(&token),
            created_at: Utc::now(),
        };
        if !self.store.add_api_token(&record)? {
            return Err(TokenError::NameTaken(name.to_string()));
        }
        self.audit(actor, "token_created", name, role)?;
        self.store.flush()?;
        let info = TokenInfo {
            name: record.name,
            role,
            created_at: Some(record.created_at),
            source: TokenSource::Database,
        };
        Ok((token, info))
    }

    /// Removes the stored token `name`, flushes and records
    /// `token_revoked` in the audit log with `actor`. The token fails from
    /// the next request on.
    pub fn revoke(&self, name: &str, actor: &str) -> Result<TokenInfo, TokenError> {
        if self.configured.iter().any(|token| token.name == name) {
            return Err(TokenError::Configured(name.to_string()));
        }
        let record = self
            .store
            .api_token(name)?
            .ok_or_else(|| TokenError::NotFound(name.to_string()))?;
        if !self.store.remove_api_token(name)? {
            return Err(TokenError::NotFound(name.to_string()));
        }
        let role = Role::parse(&record.role).unwrap_or(Role::ReadOnly);
        self.audit(actor, "token_revoked", name, role)?;
        self.store.flush()?;
        Ok(TokenInfo {
            name: record.name,
            role,
            created_at: Some(record.created_at),
            source: TokenSource::Database,
        })
    }

    fn audit(&self, actor: &str, action: &str, name: &str, role: Role) -> Result<(), StoreError> {
        self.store.append_audit(AuditEvent {
            actor: actor.to_string(),
            action: action.to_string(),
            subject: name.to_string(),
            detail: serde_json::json!({ "role": role.as_str() }),
        })?;
        Ok(())
    }
}

/// The state the token routes take from the router's state.
#[derive(Clone)]
pub struct TokenState(pub Arc<TokenRegistry>);

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> Self {
        let code = match &error {
            TokenError::InvalidName(_) => ErrorCode::InvalidRequest,
            TokenError::NameTaken(_) | TokenError::Configured(_) => ErrorCode::Conflict,
            TokenError::NotFound(_) => ErrorCode::NotFound,
            TokenError::Store(_) | TokenError::Other(_) => return internal(error),
        };
        ApiError::new(code, error.to_string())
    }
}

/// Runs a registry change on the blocking pool, because it writes to the
/// database and flushes it.
async fn blocking<T, F>(work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, TokenError> + Send + 'static,
    T: Send + 'static,
{
    Ok(tokio::task::spawn_blocking(work)
        .await
        .map_err(internal)??)
}

pub async fn list_tokens(
    State(TokenState(registry)): State<TokenState>,
) -> Result<Json<Value>, ApiError> {
    let tokens = blocking(move || Ok(registry.list()?)).await?;
    Ok(Json(serde_json::to_value(tokens).map_err(internal)?))
}

/// Body of `POST /v1/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    role: Role,
}

/// Creates a token and returns it, with its name, role and creation time,
/// in a 201. The token is not shown again.
pub async fn create_token(
    State(TokenState(registry)): State<TokenState>,
    identity: Identity,
    Body(body): Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request: CreateRequest = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "invalid token request: {error}; send {{\"name\": \"NAME\", \"role\": \"admin\" | \"analyst\" | \"ingest-only\" | \"read-only\"}}"
            ),
        )
    })?;
    let actor = format!("operator:{}", identity.name);
    let (token, info) =
        blocking(move || registry.create(&request.name, request.role, &actor)).await?;
    tracing::info!(token.name = %info.name, role = %info.role, by = %identity.name, "API token created");
    let mut body = serde_json::to_value(info).map_err(internal)?;
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(body)))
}

/// Revokes stored token `name` and returns what it was.
pub async fn revoke_token(
    State(TokenState(registry)): State<TokenState>,
    identity: Identity,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let actor = format!("operator:{}", identity.name);
    let info = blocking(move || registry.revoke(&name, &actor)).await?;
    tracing::info!(token.name = %info.name, by = %identity.name, "API token revoked");
    Ok(Json(serde_json::to_value(info).map_err(internal)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_stored_and_configured_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let configured_token = "pal_configured-example";
        let registry = TokenRegistry::new(
            store.clone(),
            vec![ConfiguredToken {
                name: "ops".into(),
                role: Role::ReadOnly,
                sha256: token_sha256(configured_token),
            }],
        );
        let (token, info) = registry.create("ana", Role::Analyst, "cli").unwrap();
        assert_eq!(info.source, TokenSource::Database);
        let found = registry.identify(&token).unwrap().unwrap();
        assert_eq!(found.name, "ana");
        assert_eq!(found.role, Role::Analyst);
        let found = registry.identify(configured_token).unwrap().unwrap();
        assert_eq!((found.name.as_str(), found.role), ("ops", Role::ReadOnly));
        assert!(registry.identify("pal_unknown").unwrap().is_none());

        assert!(matches!(
            registry.create("ana", Role::Admin, "cli"),
            Err(TokenError::NameTaken(_))
        ));
        assert!(matches!(
            registry.create("ops", Role::Admin, "cli"),
            Err(TokenError::NameTaken(_))
        ));
        assert!(matches!(
            registry.revoke("ops", "cli"),
            Err(TokenError::Configured(_))
        ));
        registry.revoke("ana", "cli").unwrap();
        assert!(registry.identify(&token).unwrap().is_none());
        assert!(matches!(
            registry.revoke("ana", "cli"),
            Err(TokenError::NotFound(_))
        ));
        let actions: Vec<String> = store
            .audit_records(0, 100)
            .unwrap()
            .into_iter()
            .map(|record| format!("{} {} {}", record.actor, record.action, record.subject))
            .collect();
        assert!(
            actions.contains(&"cli token_created ana".to_string()),
            "{actions:?}"
        );
        assert!(
            actions.contains(&"cli token_revoked ana".to_string()),
            "{actions:?}"
        );
    }
}
