//! A VirusTotal API v3 stand-in on 127.0.0.1 that replays recorded file
//! reports for the demo.
//!
//! `GET /api/v3/files/<sha256>` returns `<dir>/<sha256>.json` when it
//! exists and with VirusTotal's `NotFoundError` otherwise. A request without
//! an `x-apikey` header gets `AuthenticationRequiredError`, as the real API
//! does. Anything else is `NotFoundError`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

/// A running replay server. It stops when the process exits.
pub struct ReplayServer {
    address: String,
}

impl ReplayServer {
    pub fn address(&self) -> String {
        self.address.clone()
    }
}

/// Starts the server on an ephemeral loopback port.
pub fn start(dir: &Path) -> Result<ReplayServer, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|error| format!("cannot listen on 127.0.0.1: {error}"))?;
    let address = listener
        .local_addr()
        .map_err(|error| error.to_string())?
        .to_string();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                if let Err(error) = answer(stream, &dir) {
                    eprintln!("replay server: {error}");
                }
            });
        }
    });
    Ok(ReplayServer { address })
}

fn answer(stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut has_key = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            has_key |= name.trim().eq_ignore_ascii_case("x-apikey") && !value.trim().is_empty();
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if !has_key {
        (
            401,
            error_body("AuthenticationRequiredError", "X-Apikey header is missing"),
        )
    } else {
        match recorded_file(dir, path) {
            Some(body) => (200, body),
            None => (
                404,
                error_body("NotFoundError", &format!("{path} not found")),
            ),
        }
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

fn recorded_file(dir: &Path, path: &str) -> Option<String> {
    let hash = path.strip_prefix("/api/v3/files/")?.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let file: PathBuf = dir.join(format!("{hash}.json"));
    std::fs::read_to_string(file).ok()
}

fn error_body(code: &str, message: &str) -> String {
    let message = message.replace('\\', "\\\\").replace('"', "\\\"");
    format!(r#"{{"error": {{"code": "{code}", "message": "{message}"}}}}"#)
}
