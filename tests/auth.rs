//! Authentication of the HTTP API against a real daemon, a real sled
//! database and clients on 127.0.0.1. Each role may call exactly the
//! routes of its permissions, and tokens are stored only as hashes and stop
//! working when revoked. Signed webhooks reject every kind of bad
//! signature. The daemon serves HTTPS with a certificate made here, and
//! bodies over a route's limit are rejected with 413.

mod support;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hmac::{Hmac, Mac};
use palisade::auth::{Permission, ROUTES, Role};
use serde_json::{Value, json};
use sha2::Sha256;
use support::daemon::{Daemon, client_with_token};
use support::{TEST_ADMIN_TOKEN, files_under, repo_root, write_config};

fn wazuh_samples() -> String {
    std::fs::read_to_string(repo_root().join("samples/wazuh/fim_virustotal_alerts.jsonl")).unwrap()
}

/// Fills the parameters of a route template with values that name no
/// record, so no call changes anything that a later call depends on.
fn sample_path(template: &str) -> String {
    template
        .replace("{id}", "X00000000")
        .replace("{run}", "R99999999")
        .replace("{step}", "nothing")
        .replace("{task}", "T99")
        .replace("{name}", "nothing")
        .replace("{source}", "unconfigured")
}

/// Calls every route of the permission table with `token` and returns the
/// status and body of each, with the route.
async fn call_every_route(daemon: &Daemon, token: Option<&str>) -> Vec<(String, u16, Value)> {
    let mut results = Vec::new();
    for rule in ROUTES {
        let path = sample_path(rule.path);
        let body = (rule.method != "GET").then(|| json!({}));
        let (status, reply) = daemon
            .call_as(token, rule.method.as_str(), &path, body)
            .await;
        results.push((format!("{} {}", rule.method, rule.path), status, reply));
    }
    results
}

#[tokio::test]
async fn each_role_reaches_exactly_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let daemon = Daemon::start(&config);
    let (status, body) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202, "{body}");

    let mut tokens = Vec::new();
    for role in Role::ALL {
        let name = format!("role-{role}");
        tokens.push((role, daemon.create_token(&name, role.as_str()).await));
    }

    for (role, token) in &tokens {
        for ((route, status, reply), rule) in call_every_route(&daemon, Some(token))
            .await
            .into_iter()
            .zip(ROUTES)
        {
            if role.permits(rule.permission) {
                assert!(
                    status != 403 && status != 401 && status < 500,
                    "{role} on {route}: {status} {reply}"
                );
                let message = reply["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    !message.starts_with("no route"),
                    "{route} is in the permission table but not routed: {reply}"
                );
            } else {
                assert_eq!(status, 403, "{role} on {route}: {reply}");
                assert_eq!(reply["error"]["code"], "forbidden", "{role} on {route}");
                let message = reply["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(role.as_str()) && message.contains(rule.permission.as_str()),
                    "{role} on {route}: {message}"
                );
            }
        }
    }

    // The policy itself, independent of the table: a few routes per role.
    let pinned = [
        (Role::ReadOnly, "PATCH", "/v1/cases/X00000000", 403),
        (Role::ReadOnly, "GET", "/v1/tokens", 403),
        (Role::ReadOnly, "POST", "/v1/alerts", 403),
        (Role::Analyst, "POST", "/v1/runs/R99999999/resume", 400),
        (Role::Analyst, "POST", "/v1/tokens", 403),
        (Role::Analyst, "POST", "/v1/alerts", 403),
        (Role::IngestOnly, "POST", "/v1/alerts", 400),
        (Role::IngestOnly, "GET", "/v1/cases", 403),
        (Role::Admin, "GET", "/v1/tokens", 200),
    ];
    for (role, method, path, expected) in pinned {
        let token = &tokens.iter().find(|(each, _)| *each == role).unwrap().1;
        let (status, reply) = daemon
            .call_as(Some(token), method, path, Some(json!({})))
            .await;
        assert_eq!(status, expected, "{role} on {method} {path}: {reply}");
    }

    // Without a token, only the public routes and the signed webhook
    // respond. Every other route is 401 and explains how to send a token.
    for ((route, status, reply), rule) in call_every_route(&daemon, None)
        .await
        .into_iter()
        .zip(ROUTES)
    {
        match rule.permission {
            Permission::Public => assert_eq!(status, 200, "{route}: {reply}"),
            Permission::Signature => assert_eq!(status, 404, "{route}: {reply}"),
            _ => {
                assert_eq!(status, 401, "{route}: {reply}");
                assert_eq!(reply["error"]["code"], "unauthenticated", "{route}");
                let message = reply["error"]["message"].as_str().unwrap();
                assert!(message.contains("Authorization"), "{route}: {message}");
            }
        }
    }
    let (status, reply) = daemon
        .call_as(Some("pal_made-up"), "GET", "/v1/cases", None)
        .await;
    assert_eq!(status, 401, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not known"),
        "{reply}"
    );
    // A path that matches no route is 404 for any valid token, and 401
    // without one.
    let read_only = &tokens[3].1;
    assert_eq!(tokens[3].0, Role::ReadOnly);
    let (status, _) = daemon
        .call_as(Some(read_only), "GET", "/v1/nothing", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = daemon.call_as(None, "GET", "/v1/nothing", None).await;
    assert_eq!(status, 401);

    // The list shows names and roles, never hashes or tokens.
    let listed = daemon.get("/v1/tokens").await;
    let text = listed.to_string();
    for (role, token) in &tokens {
        assert!(text.contains(&format!("role-{role}")), "{text}");
        assert!(!text.contains(token.as_str()), "a token is listed: {text}");
        let hash = palisade::auth::token_sha256(token);
        assert!(!text.contains(&hash), "a hash is listed: {text}");
    }

    // A revoked token fails at its next request.
    let analyst = &tokens[1].1;
    assert_eq!(tokens[1].0, Role::Analyst);
    let (status, _) = daemon
        .call_as(Some(analyst), "GET", "/v1/cases", None)
        .await;
    assert_eq!(status, 200);
    let (status, reply) = daemon
        .call_as(
            Some(TEST_ADMIN_TOKEN),
            "DELETE",
            "/v1/tokens/role-analyst",
            None,
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = daemon
        .call_as(Some(analyst), "GET", "/v1/cases", None)
        .await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["error"]["code"], "unauthenticated");
    // A token from palisade.toml cannot be revoked over the API.
    let (status, reply) = daemon
        .call_as(
            Some(TEST_ADMIN_TOKEN),
            "DELETE",
            &format!("/v1/tokens/{}", support::TEST_ADMIN_NAME),
            None,
        )
        .await;
    assert_eq!(status, 409, "{reply}");
    daemon.stop();

    // The database contains each token's hash, never the token.
    let files = files_under(&dir.path().join("data"));
    let mut database = Vec::new();
    for file in &files {
        database.extend(std::fs::read(file).unwrap());
    }
    let contains = |needle: &[u8]| {
        database
            .windows(needle.len())
            .any(|window| window == needle)
    };
    let admin_hash = palisade::auth::token_sha256(&tokens[0].1);
    assert!(
        contains(admin_hash.as_bytes()),
        "the stored hash was not found, so the scan cannot be trusted"
    );
    for (role, token) in &tokens {
        assert!(
            !contains(token.as_bytes()),
            "the {role} token is stored in the database"
        );
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Computes `X-Palisade-Signature` for `body` sent at `timestamp`, as a
/// sender would, independently of the daemon's code.
fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

const WEBHOOK_SECRET: &str = "webhook-secret-e0c4f7a1b9";

/// Posts `body` to webhook `source` with the given headers and returns
/// the status and JSON response.
async fn post_webhook(
    daemon: &Daemon,
    source: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/webhooks/{source}", daemon.base))
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

#[tokio::test]
async fn webhook_takes_only_signed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    std::fs::write(dir.path().join("hook-secret"), WEBHOOK_SECRET).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "\n[secrets.hook]\nfile = \"hook-secret\"\n\n[api.webhooks.wazuh]\nsecret = \"hook\"\n",
    );
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);

    let body = wazuh_samples().into_bytes();
    let now = chrono::Utc::now().timestamp().to_string();
    let signed = |timestamp: &str, secret: &str, body: &[u8]| {
        vec![
            ("X-Palisade-Timestamp", timestamp.to_string()),
            (
                "X-Palisade-Signature",
                signature(secret.as_bytes(), timestamp, body),
            ),
        ]
    };

    // A changed byte, another secret and an old timestamp are each
    // rejected, before anything is stored.
    let mut flipped = body.clone();
    flipped[10] ^= 0x01;
    let (status, reply) = post_webhook(
        &daemon,
        "wazuh",
        &signed(&now, WEBHOOK_SECRET, &body),
        &flipped,
    )
    .await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["error"]["code"], "signature_mismatch");
    let mismatch = reply["error"]["message"].as_str().unwrap().to_string();
    assert!(mismatch.contains("does not match"), "{mismatch}");

    let (status, reply) = post_webhook(
        &daemon,
        "wazuh",
        &signed(&now, "another-secret", &body),
        &body,
    )
    .await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["error"]["code"], "signature_mismatch");

    let stale = (chrono::Utc::now().timestamp() - 600).to_string();
    let (status, reply) = post_webhook(
        &daemon,
        "wazuh",
        &signed(&stale, WEBHOOK_SECRET, &body),
        &body,
    )
    .await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["error"]["code"], "timestamp_invalid");
    let stale_message = reply["error"]["message"].as_str().unwrap().to_string();
    assert!(stale_message.contains("seconds away"), "{stale_message}");

    let (status, reply) = post_webhook(
        &daemon,
        "wazuh",
        &[("X-Palisade-Timestamp", now.clone())],
        &body,
    )
    .await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["error"]["code"], "signature_missing");
    let missing = reply["error"]["message"].as_str().unwrap().to_string();
    assert!(missing.contains("x-palisade-signature"), "{missing}");
    assert_ne!(missing, mismatch);
    assert_ne!(missing, stale_message);
    assert_ne!(mismatch, stale_message);

    // A bearer token does not stand in for the signature.
    let response = daemon
        .client()
        .post(format!("{}/v1/webhooks/wazuh", daemon.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(
        daemon.get("/v1/cases").await.as_array().unwrap().is_empty(),
        "a rejected request stored alerts"
    );

    // A webhook that is not configured looks like no route.
    let (status, reply) = post_webhook(
        &daemon,
        "suricata",
        &signed(&now, WEBHOOK_SECRET, &body),
        &body,
    )
    .await;
    assert_eq!(status, 404, "{reply}");

    // The signed batch is taken like `POST /v1/alerts`.
    let (status, reply) = post_webhook(
        &daemon,
        "wazuh",
        &signed(&now, WEBHOOK_SECRET, &body),
        &body,
    )
    .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["accepted"].as_array().unwrap().len(), 5, "{reply}");
    assert_eq!(daemon.get("/v1/cases").await.as_array().unwrap().len(), 5);
    daemon.stop();
}

#[tokio::test]
async fn bodies_over_the_route_limit_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let daemon = Daemon::start(&config);
    let (status, body) = daemon.post_alerts(wazuh_samples()).await;
    assert_eq!(status, 202, "{body}");
    let case_id = body["accepted"][0]["case_id"].as_str().unwrap().to_string();
    let client = daemon.client();
    let post = |path: &str, body: Vec<u8>| {
        client
            .post(format!("{}{path}", daemon.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let response = post("/v1/alerts", vec![b' '; (16 << 20) + 1])
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let reply: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], "body_too_large", "{reply}");

    // Other routes take 1 MiB, while an alert batch of 2 MiB is read.
    let comment = format!("{{\"text\": \"{}\"}}", "x".repeat(1 << 20));
    let response = post(
        &format!("/v1/cases/{case_id}/comments"),
        comment.into_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    let reply: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], "body_too_large", "{reply}");
    let response = post("/v1/alerts", vec![b' '; 2 << 20]).await.unwrap();
    let reply: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(reply["error"]["code"], "empty_body", "{reply}");
    daemon.stop();
}

/// Writes a self-signed certificate for 127.0.0.1 and its key, and
/// returns the paths and the certificate's PEM text.
fn write_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_pem = certified.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, cert_pem)
}

#[tokio::test]
async fn daemon_serves_https_with_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    let (cert, key, cert_pem) = write_certificate(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);
    let https = daemon.base.replace("http://", "https://");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .build()
        .unwrap();

    // A client that opens a connection and never starts its handshake
    // does not hold up the others.
    let idle = TcpStream::connect(&daemon.address).unwrap();
    let health: Value = client
        .get(format!("{https}/v1/health"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    assert_eq!(health["status"], "ok");
    let response = client
        .get(format!("{https}/v1/cases"))
        .bearer_auth(TEST_ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = client
        .get(format!("{https}/v1/cases"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    drop(idle);

    // Plain HTTP to the TLS port gets no HTTP response.
    let plain = client_with_token(TEST_ADMIN_TOKEN)
        .get(format!("{}/v1/health", daemon.base))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got a response: {plain:?}");

    // A client that does not trust the certificate is refused.
    let untrusting = reqwest::Client::new()
        .get(format!("{https}/v1/health"))
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");
    daemon.stop();
}

fn palisade(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("PALISADE_TOKEN", TEST_ADMIN_TOKEN)
        .output()
        .unwrap()
}

fn succeed(config: &Path, args: &[&str]) -> String {
    let output = palisade(config, args);
    assert!(
        output.status.success(),
        "palisade {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn first_token_comes_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), None);
    // The same configuration without `[[api.tokens]]`.
    let text = std::fs::read_to_string(&config).unwrap();
    let without_tokens = text.split("\n[[api.tokens]]").next().unwrap().to_string();
    std::fs::write(&config, &without_tokens).unwrap();

    let daemon = Daemon::start(&config);
    let (status, reply) = daemon.call_as(None, "GET", "/v1/cases", None).await;
    assert_eq!(status, 401, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("palisade token create"), "{message}");
    assert!(message.contains("--role admin"), "{message}");
    let (status, _) = daemon.call_as(None, "GET", "/v1/health", None).await;
    assert_eq!(status, 200);
    let (status, document) = daemon.call_as(None, "GET", "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    daemon.stop();

    // On the database, while the daemon is stopped.
    let first = succeed(
        &config,
        &["token", "create", "--name", "first", "--role", "admin"],
    );
    let first = first.trim().to_string();
    assert!(first.starts_with("pal_"), "{first}");
    let listed = succeed(&config, &["token", "list"]);
    assert!(
        listed.contains("first") && listed.contains("admin"),
        "{listed}"
    );
    assert!(!listed.contains(&first), "{listed}");
    let output = palisade(
        &config,
        &["token", "create", "--name", "first", "--role", "read-only"],
    );
    assert!(!output.status.success(), "a second token named first");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("exists"), "{error}");

    // Through the daemon, with the first token.
    let daemon = Daemon::start(&config);
    let (status, _) = daemon.call_as(Some(&first), "GET", "/v1/cases", None).await;
    assert_eq!(status, 200);
    let with_first = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("PALISADE_TOKEN", &first)
            .output()
            .unwrap()
    };
    let output = with_first(&[
        "token",
        "create",
        "--name",
        "reader",
        "--role",
        "read-only",
        "--server",
        &daemon.base,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reader = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let (status, _) = daemon.call_as(Some(&reader), "GET", "/v1/runs", None).await;
    assert_eq!(status, 200);
    let output = with_first(&["token", "list", "--json", "--server", &daemon.base]);
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "reader"]);
    // The reader may not manage tokens, and the CLI explains why.
    let output = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--config")
        .arg(&config)
        .args(["token", "revoke", "first", "--server", &daemon.base])
        .env("PALISADE_TOKEN", &reader)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("forbidden") && error.contains("read-only"),
        "{error}"
    );
    let output = with_first(&["token", "revoke", "reader", "--server", &daemon.base]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (status, _) = daemon.call_as(Some(&reader), "GET", "/v1/runs", None).await;
    assert_eq!(status, 401);
    daemon.stop();
}
