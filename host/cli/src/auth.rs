//! Authentication and authorization of the HTTP API.
//!
//! A caller sends `Authorization: Bearer TOKEN`. Tokens are random 256-bit
//! values written `pal_` and 43 base64url characters, so a leaked one is
//! easy to search for. Palisade keeps only their SHA-256: in the database
//! for tokens made with `palisade token create` or `POST /v1/tokens`, and
//! in `[[api.tokens]]` of palisade.toml for tokens an operator manages
//! elsewhere.
//!
//! [`ROUTES`] gives each route (method and path template) the
//! [`Permission`] it needs, and each [`Role`] has a fixed set of
//! permissions. A route missing from the table needs `admin`, so a new
//! route is closed until its line is added. The name of the token is the
//! actor of the request: the API records it in case timelines and the
//! audit log and checks it against an approval's approvers.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api_error::{ApiError, ErrorCode};
use crate::token_api::TokenRegistry;

/// Prefix of every token Palisade generates.
pub const TOKEN_PREFIX: &str = "pal_";

/// Random bytes in a generated token.
const TOKEN_BYTES: usize = 32;

/// Maximum length of a token name, in bytes.
pub const MAX_TOKEN_NAME_BYTES: usize = 64;

/// The command that creates the first token, for messages.
pub const CREATE_ADMIN_HINT: &str = "palisade token create --name NAME --role admin";

/// The role of a token, which grants a fixed set of [`Permission`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Every route, tokens included.
    Admin,
    /// Reading, and work on cases, approvals, parked runs and playbook
    /// checks.
    Analyst,
    /// `POST /v1/alerts` only.
    IngestOnly,
    /// Reading only, tokens excluded.
    ReadOnly,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Analyst, Role::IngestOnly, Role::ReadOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::IngestOnly => "ingest-only",
            Role::ReadOnly => "read-only",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// Returns whether a token of this role may use a route that needs
    /// `permission`. Routes that need no token are open to every role.
    pub fn permits(self, permission: Permission) -> bool {
        match permission {
            Permission::Public | Permission::Signature => true,
            Permission::Read => matches!(self, Role::Admin | Role::Analyst | Role::ReadOnly),
            Permission::Triage => matches!(self, Role::Admin | Role::Analyst),
            Permission::Ingest => matches!(self, Role::Admin | Role::IngestOnly),
            Permission::Admin => self == Role::Admin,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The credential and access level a route requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// No credential: the route responds without a token.
    Public,
    /// An HMAC signature of the body under a configured webhook secret,
    /// which the handler checks, in place of a token.
    Signature,
    /// Reading cases, runs, approvals, quotas, playbooks and metrics.
    Read,
    /// Changing cases, answering approvals, deciding on parked runs and
    /// checking playbooks.
    Triage,
    /// Sending alerts.
    Ingest,
    /// Managing tokens, and every route missing from [`ROUTES`].
    Admin,
}

impl Permission {
    /// Name of the permission, as the OpenAPI document's
    /// `x-palisade-permission` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Signature => "signature",
            Permission::Read => "read",
            Permission::Triage => "triage",
            Permission::Ingest => "ingest",
            Permission::Admin => "admin",
        }
    }

    /// Returns whether a caller needs a bearer token for such a route.
    pub fn needs_token(self) -> bool {
        !matches!(self, Permission::Public | Permission::Signature)
    }

    /// Roles that have this permission, for messages.
    fn roles(self) -> Vec<&'static str> {
        Role::ALL
            .into_iter()
            .filter(|role| role.permits(self))
            .map(Role::as_str)
            .collect()
    }
}

/// One line of the permission table.
#[derive(Clone, Debug)]
pub struct RouteRule {
    pub method: Method,
    /// Path template as the router writes it, such as `/v1/cases/{id}`.
    pub path: &'static str,
    pub permission: Permission,
}

const fn rule(method: Method, path: &'static str, permission: Permission) -> RouteRule {
    RouteRule {
        method,
        path,
        permission,
    }
}

/// The permission of every route. A route the router serves but this
/// table lacks needs [`Permission::Admin`]. `HEAD` takes the permission
/// of `GET`. `rustfmt::skip` keeps the table at one route per line.
#[rustfmt::skip]
pub const ROUTES: &[RouteRule] = &[
    rule(Method::GET, "/v1/health", Permission::Public),
    rule(Method::GET, "/v1/openapi.json", Permission::Public),
    rule(Method::GET, "/metrics", Permission::Read),
    rule(Method::POST, "/v1/alerts", Permission::Ingest),
    rule(Method::POST, "/v1/webhooks/{source}", Permission::Signature),
    rule(Method::GET, "/v1/runs", Permission::Read),
    rule(Method::GET, "/v1/runs/{id}", Permission::Read),
    rule(Method::POST, "/v1/runs/{id}/resume", Permission::Triage),
    rule(Method::GET, "/v1/approvals", Permission::Read),
    rule(Method::POST, "/v1/approvals/{run}/{step}", Permission::Triage),
    rule(Method::GET, "/v1/quotas", Permission::Read),
    rule(Method::GET, "/v1/cases", Permission::Read),
    rule(Method::GET, "/v1/cases/stats", Permission::Read),
    rule(Method::GET, "/v1/cases/{id}", Permission::Read),
    rule(Method::PATCH, "/v1/cases/{id}", Permission::Triage),
    rule(Method::POST, "/v1/cases/{id}/comments", Permission::Triage),
    rule(Method::POST, "/v1/cases/{id}/tasks", Permission::Triage),
    rule(Method::POST, "/v1/cases/{id}/tasks/{task}/done", Permission::Triage),
    rule(Method::GET, "/v1/playbooks", Permission::Read),
    rule(Method::GET, "/v1/playbooks/{name}", Permission::Read),
    rule(Method::POST, "/v1/playbooks/check", Permission::Triage),
    rule(Method::GET, "/v1/plugins", Permission::Read),
    rule(Method::POST, "/v1/plugins", Permission::Admin),
    rule(Method::GET, "/v1/plugins/{name}", Permission::Read),
    rule(Method::GET, "/v1/plugins/{name}/history", Permission::Read),
    rule(Method::POST, "/v1/plugins/{name}/activate", Permission::Admin),
    rule(Method::POST, "/v1/plugins/{name}/rollback", Permission::Admin),
    rule(Method::GET, "/v1/tokens", Permission::Admin),
    rule(Method::POST, "/v1/tokens", Permission::Admin),
    rule(Method::DELETE, "/v1/tokens/{name}", Permission::Admin),
];

/// Returns the permission that `method` on the route template `path`
/// needs: its line of [`ROUTES`], or [`Permission::Admin`] when the table
/// has no such line.
pub fn required_permission(method: &Method, path: &str) -> Permission {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    ROUTES
        .iter()
        .find(|rule| rule.method == method && rule.path == path)
        .map_or(Permission::Admin, |rule| rule.permission)
}

/// Generates a new token: [`TOKEN_PREFIX`] and 32 random bytes in
/// base64url.
pub fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|error| anyhow::anyhow!("cannot read random bytes: {error}"))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Returns the SHA-256 of `token` as 64 lowercase hexadecimal digits, the
/// form stored in the database and written in `[[api.tokens]] sha256`.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks a token name: 1 to 64 ASCII letters, digits, `.`, `_`, `-` or
/// `@`. Names appear in URLs and as actors, so they are kept plain.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TOKEN_NAME_BYTES {
        return Err(format!(
            "token name {name:?} must be 1 to {MAX_TOKEN_NAME_BYTES} characters long"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if !name.chars().all(allowed) {
        return Err(format!(
            "token name {name:?} may contain only ASCII letters, digits, `.`, `_`, `-` and `@`"
        ));
    }
    Ok(())
}

/// The caller of a request, from its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Name of the token, which is the actor of the request.
    pub name: String,
    pub role: Role,
}

impl Identity {
    /// Returns the actor of a write: the token's name. A request that
    /// names a different actor (`actor` in the body or query) is rejected
    /// with 403 `actor_mismatch`, because a token acts only as itself.
    pub fn actor(&self, claimed: Option<&str>) -> Result<String, ApiError> {
        match claimed.map(str::trim) {
            Some(claimed) if claimed != self.name => Err(ApiError::new(
                ErrorCode::ActorMismatch,
                format!(
                    "the request names actor {claimed:?}, but its token is {:?}; a token acts only as its own name, so drop `actor` or use the token of {claimed:?}",
                    self.name
                ),
            )),
            _ => Ok(self.name.clone()),
        }
    }
}

/// The middleware adds the [`Identity`] to every request that needed a
/// token, so a handler behind such a route can take it as an argument.
impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Identity>().cloned().ok_or_else(|| {
            crate::api_error::internal(format!(
                "route {} has no authenticated caller; its permission table entry is missing or public",
                parts.uri.path()
            ))
        })
    }
}

/// Reads the token of `Authorization: Bearer TOKEN`. The scheme is matched
/// without regard to case, as HTTP authentication schemes are.
fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or("the request has no `Authorization` header")?;
    // Proxies and clients may differ on which of two headers counts, so a
    // request with more than one is rejected rather than guessed at.
    if values.next().is_some() {
        return Err("the request has more than one `Authorization` header; send one");
    }
    let value = value
        .to_str()
        .map_err(|_| "the `Authorization` header is not ASCII text")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("the `Authorization` header is not `Bearer TOKEN`")?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("the `Authorization` header is not `Bearer TOKEN`");
    }
    Ok(token.trim())
}

fn unauthenticated(message: String) -> Response {
    ApiError::new(ErrorCode::Unauthenticated, message).into_response()
}

/// Authenticates and authorizes every request, as middleware: looks up
/// the route's permission, identifies the bearer token, checks the
/// token's role and adds the [`Identity`] for the handler. Routes that
/// need no token pass through. A path that matches no route needs a valid
/// token of any role, so a caller learns that a path does not exist only
/// after authenticating. Tokens are never logged, only their names.
pub async fn authenticate(
    State(registry): State<Arc<TokenRegistry>>,
    mut request: Request,
    next: Next,
) -> Response {
    let template = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string());
    let permission = template
        .as_deref()
        .map(|template| required_permission(request.method(), template));
    if permission.is_some_and(|permission| !permission.needs_token()) {
        return next.run(request).await;
    }
    let route = format!(
        "{} {}",
        request.method(),
        template.as_deref().unwrap_or(request.uri().path())
    );
    let token = match bearer_token(request.headers()) {
        Ok(token) => token,
        Err(problem) => {
            tracing::debug!(%route, reason = problem, "request rejected: no bearer token");
            return unauthenticated(missing_token_message(&registry, problem));
        }
    };
    let identity = match registry.identify(token) {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            tracing::debug!(%route, "request rejected: unknown or revoked token");
            return unauthenticated(missing_token_message(
                &registry,
                "the bearer token is not known: it is mistyped, revoked or from another installation",
            ));
        }
        Err(error) => return crate::api_error::internal(error).into_response(),
    };
    if let Some(permission) = permission
        && !identity.role.permits(permission)
    {
        tracing::debug!(%route, token.name = %identity.name, role = %identity.role, "request rejected: role lacks permission");
        return ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "token {:?} has role {}, but {route} needs permission `{}`, which only roles {} have",
                identity.name,
                identity.role,
                permission.as_str(),
                permission.roles().join(" and ")
            ),
        )
        .into_response();
    }
    tracing::debug!(%route, token.name = %identity.name, role = %identity.role, "request authenticated");
    request.extensions_mut().insert(identity);
    next.run(request).await
}

/// The message of a 401: what was wrong with the header, and how to get a
/// token. With no token anywhere, it explains how to create the first one.
fn missing_token_message(registry: &TokenRegistry, problem: &str) -> String {
    match registry.is_empty() {
        Ok(true) => format!(
            "{problem}, and no API token exists yet; stop the daemon and run `{CREATE_ADMIN_HINT}`, or add an `[[api.tokens]]` entry to palisade.toml, then send `Authorization: Bearer TOKEN`"
        ),
        _ => format!(
            "{problem}; send `Authorization: Bearer TOKEN` with a token from `palisade token create`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::StatusCode;
    use serde_json::Value;

    use super::*;

    #[test]
    fn roles_permit_their_routes_only() {
        let expected = [
            (Role::Admin, "public signature read triage ingest admin"),
            (Role::Analyst, "public signature read triage"),
            (Role::ReadOnly, "public signature read"),
            (Role::IngestOnly, "public signature ingest"),
        ];
        let permissions = [
            Permission::Public,
            Permission::Signature,
            Permission::Read,
            Permission::Triage,
            Permission::Ingest,
            Permission::Admin,
        ];
        for (role, allowed) in expected {
            let permitted: Vec<&str> = permissions
                .into_iter()
                .filter(|permission| role.permits(*permission))
                .map(Permission::as_str)
                .collect();
            assert_eq!(permitted.join(" "), allowed, "role {role}");
        }
    }

    #[test]
    fn routes_missing_from_the_table_need_admin() {
        let cases = [
            (Method::GET, "/v1/cases", Permission::Read),
            (Method::HEAD, "/v1/cases", Permission::Read),
            (Method::DELETE, "/v1/cases", Permission::Admin),
            (Method::GET, "/v1/reports", Permission::Admin),
            (Method::GET, "/v1/health", Permission::Public),
            (Method::POST, "/v1/webhooks/{source}", Permission::Signature),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                required_permission(&method, path),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn table_has_each_route_once() {
        let mut seen = BTreeSet::new();
        for rule in ROUTES {
            assert!(
                seen.insert((rule.method.as_str(), rule.path)),
                "{} {} is listed twice",
                rule.method,
                rule.path
            );
        }
    }

    #[test]
    fn generated_tokens_are_prefixed_and_distinct() {
        let first = generate_token().unwrap();
        let second = generate_token().unwrap();
        assert!(first.starts_with(TOKEN_PREFIX), "{first}");
        assert_eq!(first.len(), TOKEN_PREFIX.len() + 43, "{first}");
        assert_ne!(first, second);
        assert_eq!(token_sha256(&first).len(), 64);
        assert_ne!(token_sha256(&first), token_sha256(&second));
    }

    #[test]
    fn token_names_are_checked() {
        for name in ["ana", "soc.bot-1", "ana@example.org", "A_B"] {
            assert!(check_token_name(name).is_ok(), "{name}");
        }
        for name in ["", "a b", "a/b", "ä", &"a".repeat(65)] {
            assert!(check_token_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn bearer_header_is_parsed() {
        let header = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert_eq!(bearer_token(&header("Bearer pal_x")), Ok("pal_x"));
        assert_eq!(bearer_token(&header("bearer  pal_x ")), Ok("pal_x"));
        assert!(bearer_token(&header("Basic abc")).is_err());
        assert!(bearer_token(&header("Bearer ")).is_err());
        assert!(bearer_token(&HeaderMap::new()).is_err());
        let mut twice = header("Bearer pal_x");
        twice.append(header::AUTHORIZATION, "Bearer pal_y".parse().unwrap());
        let error = bearer_token(&twice).unwrap_err();
        assert!(error.contains("more than one"), "{error}");
    }

    #[test]
    fn actor_must_be_the_token_name() {
        let identity = Identity {
            name: "ana".into(),
            role: Role::Analyst,
        };
        assert_eq!(identity.actor(None).unwrap(), "ana");
        assert_eq!(identity.actor(Some("ana")).unwrap(), "ana");
        let error = identity.actor(Some("lead")).unwrap_err();
        assert_eq!(error.status, StatusCode::FORBIDDEN);
        assert_eq!(error.code, ErrorCode::ActorMismatch);
        assert!(error.message.contains("\"lead\""), "{}", error.message);
    }

    /// The OpenAPI document lists exactly the routes of [`ROUTES`], each
    /// with the same permission, and exactly the error codes of
    /// [`ErrorCode::ALL`].
    #[test]
    fn openapi_document_matches_the_permission_table() {
        let document: Value = serde_json::from_str(crate::server::OPENAPI_DOCUMENT).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, operations) in document["paths"].as_object().unwrap() {
            for (method, operation) in operations.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                let permission = operation["x-palisade-permission"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has no x-palisade-permission"));
                documented.insert((method.to_uppercase(), path.clone(), permission.to_string()));
            }
        }
        let table: BTreeSet<(String, String, String)> = ROUTES
            .iter()
            .map(|rule| {
                (
                    rule.method.to_string(),
                    rule.path.to_string(),
                    rule.permission.as_str().to_string(),
                )
            })
            .collect();
        let undocumented: Vec<_> = table.difference(&documented).collect();
        assert!(
            undocumented.is_empty(),
            "in the permission table but not in the OpenAPI document: {undocumented:?}"
        );
        let unlisted: Vec<_> = documented.difference(&table).collect();
        assert!(
            unlisted.is_empty(),
            "in the OpenAPI document but not in the permission table: {unlisted:?}"
        );

        let codes: Vec<&str> =
            document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
                ["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|code| code.as_str().unwrap())
                .collect();
        let expected: Vec<&str> = ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
        assert_eq!(codes, expected);
    }
}
