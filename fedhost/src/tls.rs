//! TLS for the TCP links (rustls over tokio): what a server presents, what a
//! client trusts, and the certificates' fingerprints the history records.
//!
//! A server loads its certificate chain and private key (`--tls-cert`,
//! `--tls-key`) and, for mutual TLS, the CA its clients' certificates must
//! chain to (`--tls-client-ca`). A client loads the CA it trusts for the
//! server (`--tls-ca`) and, for mutual TLS, its own certificate and key. Files
//! are PEM, as openssl and rcgen write them. Only rustls' `ring` provider and
//! its safe defaults (TLS 1.2 and 1.3, no legacy ciphers) are used; there is
//! no switch to skip verifying the server.
//!
//! TLS sits under the framed link: the link's frames are the same inside it,
//! and admission by key runs inside the TLS session as it does without.
//!
//! [`Incoming`] accepts on a TCP listener and runs every handshake in a task
//! of its own, beside the accepting loop, so a peer that connects and says
//! nothing (or a plaintext client) holds up no one: each has
//! [`HANDSHAKE_TIMEOUT`], at most [`HANDSHAKES`] run at once (beyond that a
//! connection is closed at once), and a failed one is logged with the peer's
//! address and rustls' reason. Our listener and Flower's all take connections from it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// How long a connection has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once, at most.
pub const HANDSHAKES: usize = 64;

/// A server's end of a TLS connection.
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A client's end of a TLS connection.
pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Why TLS could not be set up from the files given.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable, or not the PEM it should be.
    #[error("{what} {path}: {problem}")]
    File {
        /// Which option's file (e.g. "--tls-cert").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the combination (e.g. a key that is not the certificate's).
    #[error("{what}: {source}")]
    Config {
        /// What was being set up.
        what: &'static str,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The CA file for client certificates holds nothing rustls can verify with.
    #[error("--tls-client-ca {path}: {problem}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        problem: String,
    },
    /// The name to check the server's certificate against is not a DNS name or an IP address.
    #[error("{0:?} is not a DNS name or an IP address to check the server's certificate against")]
    ServerName(String),
}

/// A server's TLS: its certificate, and whether clients must present theirs.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    /// The same certificate, asking clients for none (for Flower's clients, which have none).
    server_only: Arc<rustls::ServerConfig>,
    mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the server's chain (`cert`, leaf first) and `key`; with
    /// `client_ca`, only clients whose certificate chains to it are accepted.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Self, TlsError> {
        let chain = certificates("--tls-cert", cert)?;
        let key = private_key("--tls-key", key)?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                what: "TLS versions",
                source,
            })?;
        let pair_error = |source| TlsError::Config {
            what: "--tls-cert and --tls-key",
            source,
        };
        let server_only = builder
            .clone()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(pair_error)?;
        let config = match client_ca {
            Some(path) => {
                let roots = Arc::new(roots("--tls-client-ca", path)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.to_path_buf(),
                        problem: e.to_string(),
                    })?;
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key)
                    .map_err(pair_error)?
            }
            None => server_only.clone(),
        };
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            server_only: Arc::new(server_only),
            mutual: client_ca.is_some(),
        })
    }

    /// The same certificate without asking clients for one, offering the
    /// application protocols `alpn` (gRPC needs `h2`): for Flower's
    /// clients, which cannot present a certificate (they authenticate, if at
    /// all, by their own means).
    pub fn server_only(&self, alpn: &[&[u8]]) -> ServerTls {
        let mut config = (*self.server_only).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            server_only: Arc::clone(&self.server_only),
            mutual: false,
        }
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.mutual
    }
}

/// A client's TLS: the CA it trusts the server by, and its own certificate for mutual TLS.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts servers whose certificate chains to `ca`; presents `identity`
    /// (certificate chain and key files) when given. The server's certificate
    /// is checked against `server_name`, or else against the host part of the
    /// address connected to.
    pub fn load(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
        server_name: Option<&str>,
    ) -> Result<Self, TlsError> {
        let roots = roots("--tls-ca", ca)?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Config {
                what: "TLS versions",
                source,
            })?
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    certificates("--tls-cert", cert)?,
                    private_key("--tls-key", key)?,
                )
                .map_err(|source| TlsError::Config {
                    what: "--tls-cert and --tls-key",
                    source,
                })?,
            None => builder.with_no_client_auth(),
        };
        let server_name = server_name.map(checked_name).transpose()?;
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the client's side of the handshake with the server at `address`
    /// (host:port) over `socket`.
    pub async fn connect(
        &self,
        address: &str,
        socket: TcpStream,
    ) -> Result<ClientStream, std::io::Error> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => checked_name(host_of(address))
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        };
        self.connector.connect(name, socket).await
    }
}

/// TLS connections accepted on a TCP listener, each with its peer's address.
pub struct Incoming {
    done: mpsc::Receiver<(ServerStream, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Incoming {
    /// Accepts on `tcp` and runs every connection's handshake with `tls`.
    pub fn new(tcp: TcpListener, tls: ServerTls) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (finished, done) = mpsc::channel(HANDSHAKES);
        let accepting = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(HANDSHAKES));
            loop {
                let (socket, peer) = crate::link::accept(&tcp).await;
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, "{HANDSHAKES} TLS handshakes under way: closed");
                    continue;
                };
                let (acceptor, finished) = (tls.acceptor.clone(), finished.clone());
                tokio::spawn(async move {
                    let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket));
                    match shaken.await {
                        Ok(Ok(stream)) => {
                            drop(slot);
                            let _ = finished.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => {
                            tracing::warn!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                        }
                    }
                });
            }
        });
        Ok(Incoming {
            done,
            local,
            accepting,
        })
    }

    /// The next connection whose handshake succeeded, and its peer.
    pub async fn next(&mut self) -> Option<(ServerStream, SocketAddr)> {
        self.done.recv().await
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The SHA-256 of a certificate (DER), in hex: how the history names a
/// client certificate without storing it.
pub fn fingerprint(certificate: &CertificateDer<'_>) -> String {
    Sha256::digest(certificate.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The client certificate a server-side session was shown, as [`fingerprint`]s it.
pub fn peer_fingerprint(stream: &ServerStream) -> Option<String> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(fingerprint)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host part of `host:port` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn checked_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let problem = |problem: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| problem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(e.to_string()))?;
    if chain.is_empty() {
        return Err(problem("holds no PEM certificate".into()));
    }
    Ok(chain)
}

fn private_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what,
        path: path.to_path_buf(),
        problem: format!("no PEM private key: {e}"),
    })
}

fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(what, path)? {
        roots.add(certificate).map_err(|source| TlsError::Config {
            what: "a CA certificate",
            source,
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_what_the_certificate_is_checked_against() {
        assert_eq!(host_of("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(host_of("fed.example.org:443"), "fed.example.org");
        assert_eq!(host_of("[::1]:8000"), "::1");
        assert!(checked_name(host_of("[::1]:8000")).is_ok());
        assert!(matches!(
            checked_name("not a name"),
            Err(TlsError::ServerName(_))
        ));
    }

    /// A TLS server on loopback: for each connection whose handshake
    /// succeeded, the fingerprint of the client certificate it was shown.
    async fn serve(
        tls: ServerTls,
    ) -> (
        String,
        tokio::sync::mpsc::Receiver<Result<Option<String>, String>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut incoming = Incoming::new(listener, tls).unwrap();
        let address = incoming.local_addr().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some((mut stream, _)) = incoming.next().await {
                let mut byte = [0u8; 1];
                let read = stream.read_exact(&mut byte).await;
                let _ = stream.write_all(&byte).await;
                let _ = stream.shutdown().await;
                let result = read
                    .map(|_| peer_fingerprint(&stream))
                    .map_err(|e| e.to_string());
                if tx.send(result).await.is_err() {
                    return;
                }
            }
        });
        (address, rx)
    }

    /// Connects, says one byte and reads it back: the client's view.
    async fn talk(client: &ClientTls, address: &str) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = TcpStream::connect(address).await.unwrap();
        let mut stream = client
            .connect(address, socket)
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    #[tokio::test]
    async fn mutual_tls_admits_the_ca_s_clients_only_and_names_their_certificate() {
        let dir = std::env::temp_dir().join(format!("fedhost-mtls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ours =
            crate::certificates::issue(&dir.join("ours"), &["127.0.0.1".into()], &["alice".into()])
                .unwrap();
        let theirs =
            crate::certificates::issue(&dir.join("theirs"), &["127.0.0.1".into()], &["eve".into()])
                .unwrap();
        let (cert, key) = &ours.server;
        let server = ServerTls::load(cert, key, Some(&ours.ca)).unwrap();
        assert!(server.mutual());
        let (address, mut seen) = serve(server).await;

        let (_, alice_cert, alice_key) = &ours.clients[0];
        let alice = ClientTls::load(&ours.ca, Some((alice_cert, alice_key)), None).unwrap();
        assert_eq!(talk(&alice, &address).await, Ok(()));
        let expected = fingerprint(&certificates("test", alice_cert).unwrap()[0]);
        assert_eq!(seen.recv().await.unwrap(), Ok(Some(expected.clone())));

        // Without a certificate, and with one from another CA: refused by the server.
        let anonymous = ClientTls::load(&ours.ca, None, None).unwrap();
        assert!(talk(&anonymous, &address).await.is_err());
        let (_, eve_cert, eve_key) = &theirs.clients[0];
        let eve = ClientTls::load(&ours.ca, Some((eve_cert, eve_key)), None).unwrap();
        assert!(talk(&eve, &address).await.is_err());

        // A client that trusts another CA refuses the server.
        let misled = ClientTls::load(&theirs.ca, Some((alice_cert, alice_key)), None).unwrap();
        let refused = talk(&misled, &address).await.unwrap_err();
        assert!(refused.contains("certificate"), "{refused}");
        // A name the server's certificate does not hold is refused too.
        let wrong_name = ClientTls::load(
            &ours.ca,
            Some((alice_cert, alice_key)),
            Some("fed.example.org"),
        )
        .unwrap();
        assert!(talk(&wrong_name, &address).await.is_err());
        // None of them became a connection: the next one is Alice's again.
        assert_eq!(talk(&alice, &address).await, Ok(()));
        assert_eq!(seen.recv().await.unwrap(), Ok(Some(expected)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_that_are_not_pem_are_refused_with_the_option_and_path() {
        let dir = std::env::temp_dir().join(format!("fedhost-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = ServerTls::load(&junk, &junk, None).unwrap_err().to_string();
        assert!(
            e.starts_with("--tls-cert") && e.contains("junk.pem") && e.contains("no PEM"),
            "{e}"
        );
        let missing = dir.join("missing.pem");
        let e = ClientTls::load(&missing, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-ca") && e.contains("missing.pem"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
