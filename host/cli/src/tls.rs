//! HTTPS for the daemon: a listener that completes each TLS handshake in a
//! task of its own, so a client that stalls its handshake delays nobody
//! else, and hands finished connections to `axum::serve`. Dropping the
//! listener, as a graceful shutdown does, stops accepting.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::api_config::TlsConfig;

/// Time a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once. The listener accepts no more TCP
/// connections until one of them ends, which takes at most
/// [`HANDSHAKE_TIMEOUT`].
const MAX_PENDING_HANDSHAKES: usize = 256;

/// Finished connections waiting for the server to take them.
const READY_QUEUE: usize = 64;

/// Reads the certificate chain and key of `[api.tls]` and builds the server
/// configuration: TLS 1.2 and 1.3 with the `ring` provider, HTTP/1.1 by
/// ALPN.
pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect())
        .with_context(|| {
            format!(
                "cannot read the certificates of `[api.tls] cert` from {}; it must be a PEM file",
                tls.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "`[api.tls] cert` file {} contains no PEM certificate; put the server's certificate first, then its intermediates",
            tls.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).with_context(|| {
        format!(
            "cannot read the private key of `[api.tls] key` from {}; it must be a PEM file with a PKCS#8, PKCS#1 or SEC1 key",
            tls.key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the key in {} does not fit the certificate in {}",
                tls.key.display(),
                tls.cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener that serves TLS connections to `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `listener`, with the handshakes done under
    /// `config`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        let accepting = tokio::spawn(accept_connections(
            listener,
            TlsAcceptor::from(config),
            sender,
        ));
        Ok(Self {
            ready,
            local_addr,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the listening socket. Handshakes in progress end on their
        // own, because nothing takes their connections any more.
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ends only when this listener is dropped,
            // so this is not reached while the server runs.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Accepts TCP connections and runs each handshake in its own task, with a
/// timeout, until the receiving side is gone.
async fn accept_connections(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    while !ready.is_closed() {
        // The semaphore is never closed, so acquiring fails only if it
        // were; stop accepting then.
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                pause_after_accept_error(error).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(connection)) => {
                    // A send fails only when the server has stopped.
                    let _ = ready.send((connection, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Waits after a failed `accept`. A connection reset before it was
/// accepted concerns one client only; anything else, such as running out of
/// file descriptors, is logged and waited out for a second.
async fn pause_after_accept_error(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
