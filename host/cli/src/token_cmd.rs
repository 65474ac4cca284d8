//! `palisade token create|list|revoke`: API tokens, on the database while
//! the daemon is stopped, or through a running daemon with `--server URL`
//! and an admin token.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_client::ApiClient;
use crate::auth::Role;
use crate::config::Config;
use crate::output::printable_lines;
use crate::token_api::TokenRegistry;

/// Role names as the command line takes them.
const ROLES: [&str; 4] = ["admin", "analyst", "ingest-only", "read-only"];

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it to standard output. It is shown
    /// only this once: Palisade keeps only its SHA-256.
    Create {
        /// Name of the token: 1 to 64 letters, digits, `.`, `_`, `-` or
        /// `@`. The API records it as the actor of the token's requests.
        #[arg(long)]
        name: String,
        /// admin: everything; analyst: reading and work on cases,
        /// approvals and parked runs; ingest-only: sending alerts;
        /// read-only: reading.
        #[arg(long, value_parser = ROLES)]
        role: String,
        /// Create the token through a running daemon at this URL, with an
        /// admin token, instead of on the database.
        #[arg(long)]
        server: Option<String>,
    },
    /// List the tokens: name, role, creation time and where each is kept
    /// (the database or palisade.toml). Hashes are never shown.
    List {
        /// Read from a running daemon at this URL, with an admin token.
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke stored token NAME. Requests with it fail from then on.
    Revoke {
        name: String,
        /// Revoke through a running daemon at this URL, with an admin
        /// token.
        #[arg(long)]
        server: Option<String>,
    },
}

/// Runs a `palisade token` command. `token` is the API token sent with
/// `--server`.
pub async fn run(
    config: &Config,
    command: TokenCommand,
    token: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let local = || -> anyhow::Result<TokenRegistry> {
        let store = crate::host::open_store(config)?;
        Ok(TokenRegistry::new(store, config.api.tokens()))
    };
    match command {
        TokenCommand::Create { name, role, server } => {
            // clap accepts only the names `Role::parse` accepts.
            let role = Role::parse(&role)
                .ok_or_else(|| anyhow::anyhow!("unknown role {role:?}; use one of {ROLES:?}"))?;
            let (secret, name, role) = match server {
                Some(server) => {
                    let body = json!({ "name": name, "role": role.as_str() });
                    let reply = ApiClient::new(&server, token)
                        .send(Method::POST, "/v1/tokens", &[], Some(body))
                        .await?;
                    let text = |field: &str| reply[field].as_str().unwrap_or_default().to_string();
                    (text("token"), text("name"), text("role"))
                }
                None => {
                    let (secret, info) = local()?.create(&name, role, "cli")?;
                    (secret, info.name, info.role.to_string())
                }
            };
            println!("{secret}");
            eprintln!(
                "created token {name:?} with role {role}; it is shown only now, so keep it in a password manager or secret store"
            );
        }
        TokenCommand::List { server, json } => {
            let tokens = match server {
                Some(server) => ApiClient::new(&server, token).get("/v1/tokens").await?,
                None => serde_json::to_value(local()?.list()?)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                print!("{}", printable_lines(&token_table(&tokens)));
            }
        }
        TokenCommand::Revoke { name, server } => {
            match server {
                Some(server) => {
                    let path = format!("/v1/tokens/{name}");
                    ApiClient::new(&server, token)
                        .send(Method::DELETE, &path, &[], None)
                        .await?;
                }
                None => {
                    local()?.revoke(&name, "cli")?;
                }
            }
            eprintln!("revoked token {name:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Formats the `GET /v1/tokens` list as a table.
fn token_table(tokens: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<20} SOURCE",
        "NAME", "ROLE", "CREATED"
    );
    for token in tokens.as_array().into_iter().flatten() {
        let text = |field: &str| token[field].as_str().unwrap_or("-").to_string();
        let created = token["created_at"]
            .as_str()
            .and_then(|time| time.parse::<chrono::DateTime<chrono::Utc>>().ok())
            .map(|time| time.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<20} {}",
            text("name"),
            text("role"),
            created,
            text("source")
        );
    }
    out
}
