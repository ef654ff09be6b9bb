//! A federation's own small certificate authority (rcgen): a CA, a server
//! certificate for the hosts the server is reached by, and a client
//! certificate per participant name, as PEM files for [`crate::tls`].
//!
//! It is what `host-server certificates` writes and what the tests generate
//! at test time: a federation that has no PKI of its own can run TLS and
//! mutual TLS with it. Keys are ECDSA P-256, written readable by the owner
//! only; certificates are valid from now for `DAYS` days.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// How long the certificates are valid, in days.
pub const DAYS: i64 = 365;

/// Longest client name, in bytes (it is a file name and a certificate's common name).
const MAX_NAME_BYTES: usize = 64;

/// Why certificates could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The folder already holds a CA: issuing again would strand the certificates made with it.
    #[error("{0} already holds a CA (ca.pem): choose another folder, or remove it to start over")]
    Exists(PathBuf),
    /// A client name cannot be a file name.
    #[error(
        "client name {0:?}: use 1 to {MAX_NAME_BYTES} letters, digits, '.', '-' or '_' (it names the files)"
    )]
    Name(String),
    /// No host to issue the server certificate for.
    #[error("the server certificate needs at least one host name or IP address")]
    NoHost,
    /// rcgen refused (e.g. a host that is not a valid DNS name).
    #[error("cannot issue a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The files written, by role.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The CA's certificate: what clients trust (`--tls-ca`) and, for mutual
    /// TLS, what the server checks clients by (`--tls-client-ca`).
    pub ca: PathBuf,
    /// The server's certificate and key (`--tls-cert`, `--tls-key`).
    pub server: (PathBuf, PathBuf),
    /// Each client's name, certificate and key.
    pub clients: Vec<(String, PathBuf, PathBuf)>,
}

/// Issues, into `dir` (created if need be), a CA, a server certificate for
/// `hosts` (DNS names or IP addresses) and a client certificate for each of
/// `clients`, whose common name is the client's name.
pub fn issue(dir: &Path, hosts: &[String], clients: &[String]) -> Result<Issued, IssueError> {
    if hosts.is_empty() {
        return Err(IssueError::NoHost);
    }
    if let Some(bad) = clients.iter().find(|name| !is_file_name(name)) {
        return Err(IssueError::Name(bad.clone()));
    }
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(IssueError::Exists(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|source| IssueError::Write {
        path: dir.to_path_buf(),
        source,
    })?;

    let ca_key = KeyPair::generate()?;
    let mut ca = params(Vec::new(), "fedavg federation CA")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&ca_path, &ca_cert.pem(), false)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut server = params(hosts.to_vec(), &hosts[0])?;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = pair(dir, "server", &server, &issuer)?;

    let mut issued = Vec::with_capacity(clients.len());
    for name in clients {
        let mut client = params(Vec::new(), name)?;
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (cert, key) = pair(dir, name, &client, &issuer)?;
        issued.push((name.clone(), cert, key));
    }
    Ok(Issued {
        ca: ca_path,
        server,
        clients: issued,
    })
}

fn params(names: Vec<String>, common_name: &str) -> Result<CertificateParams, IssueError> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(DAYS);
    Ok(params)
}

/// Issues `params` under `issuer` with a new key, written as `<stem>.pem` and `<stem>.key`.
fn pair(
    dir: &Path,
    stem: &str,
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(PathBuf, PathBuf), IssueError> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

fn is_file_name(name: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&name.len())
        && name != "ca"
        && name != "server"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), IssueError> {
    let failed = |source| IssueError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(failed)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_file_names_or_clash_are_refused_before_anything_is_written() {
        let dir = std::env::temp_dir().join(format!("fedhost-issue-{}", std::process::id()));
        for bad in [
            "",
            "../x",
            "a/b",
            "server",
            "ca",
            ".hidden",
            &"x".repeat(65),
        ] {
            let e = issue(&dir, &["127.0.0.1".into()], &[bad.to_string()]).unwrap_err();
            assert!(matches!(e, IssueError::Name(_)), "{bad:?}: {e}");
        }
        assert!(matches!(issue(&dir, &[], &[]), Err(IssueError::NoHost)));
        assert!(!dir.exists());
    }
}
