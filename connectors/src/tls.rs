//! The binary's one TLS stack and the settings its clients share.
//!
//! Every TLS connection inkstream makes (Redis `rediss://`, https to the
//! email/SMS providers and webhooks, SMTP STARTTLS/implicit TLS) goes
//! through rustls with the ring provider. Servers are verified against the
//! system roots (Debian's `ca-certificates`) unless a section names its own
//! CA file; a client certificate (mutual TLS) is optional.
//!
//! [`redis_client`] is the one constructor of every Redis client in the
//! binary (log, views, notifier store, fanout broker, lease, sessions).

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use schemas::{Classify, Fault};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Makes ring the process-wide rustls provider (idempotent). Clients built
/// with `ClientConfig::builder()` (redis, lettre) need one installed.
pub fn install_provider() {
    // Err only when a provider is already installed: the same one, by us.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// `[<section>.tls]`: whom to trust and who we are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// PEM file of the CA(s) that signed the server's certificate. Unset:
    /// the system roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to the server (mutual TLS); needs
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        self != &TlsFiles::default()
    }

    /// Reads the files: the CA bundle (checked to hold certificates) and
    /// the client pair. `section` names the settings in errors (`redis.tls`).
    pub fn load(&self, section: &'static str) -> Result<LoadedTls, TlsError> {
        let ca = match &self.ca_file {
            Some(path) => {
                let pem = read(section, "ca_file", path)?;
                let certs = CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsError::BadPem {
                        key: key(section, "ca_file"),
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if certs.is_empty() {
                    return Err(TlsError::BadPem {
                        key: key(section, "ca_file"),
                        path: path.clone(),
                        reason: "no certificate in it".into(),
                    });
                }
                Some(pem)
            }
            None => None,
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((
                read(section, "cert_file", c)?,
                read(section, "key_file", k)?,
            )),
            (None, None) => None,
            _ => return Err(TlsError::HalfPair { section }),
        };
        Ok(LoadedTls { ca, identity })
    }
}

/// The contents of [`TlsFiles`]: PEM bytes.
#[derive(Clone, Default)]
pub struct LoadedTls {
    /// CA bundle; `None`: the system roots.
    pub ca: Option<Vec<u8>>,
    /// (certificate chain, private key).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl LoadedTls {
    /// An HTTP client builder trusting the CA (when set) and presenting the
    /// client certificate (when set).
    pub fn apply(
        &self,
        mut b: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, reqwest::Error> {
        if let Some(ca) = &self.ca {
            for cert in reqwest::Certificate::from_pem_bundle(ca)? {
                b = b.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &self.identity {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            b = b.identity(reqwest::Identity::from_pem(&pem)?);
        }
        Ok(b)
    }
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.debug_struct("LoadedTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

fn key(section: &str, field: &str) -> String {
    format!("{section}.{field}")
}

fn read(section: &str, field: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key: key(section, field),
        path: path.to_owned(),
        source,
    })
}

/// Why a TLS setting cannot be used: the operator must fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read `{}`: {source}", path.display())]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: `{}` is not usable PEM: {reason}", path.display())]
    BadPem {
        key: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{section}.cert_file and {section}.key_file go together: set both or neither")]
    HalfPair { section: &'static str },
    #[error(
        "redis.tls is set but redis.url does not start with rediss:// (the TLS settings would \
         be ignored): use rediss://"
    )]
    TlsWithoutRediss,
    #[error("redis.url / redis.tls: {0}")]
    Redis(redis::RedisError),
}

impl Classify for TlsError {
    fn fault(&self) -> Fault {
        Fault::Config
    }
}

/// A Redis client for `url`: `rediss://` connects with TLS, trusting
/// `tls.ca_file` (or the system roots) and presenting `tls.cert_file` when
/// set. Connects nothing yet.
pub fn redis_client(url: &str, tls: &TlsFiles) -> Result<redis::Client, TlsError> {
    install_provider();
    if !url.starts_with("rediss://") {
        if tls.is_set() {
            return Err(TlsError::TlsWithoutRediss);
        }
        return redis::Client::open(url).map_err(TlsError::Redis);
    }
    let loaded = tls.load("redis.tls")?;
    let certs = redis::TlsCertificates {
        client_tls: loaded
            .identity
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: loaded.ca,
    };
    redis::Client::build_with_tls(url, certs).map_err(TlsError::Redis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_without_rediss_are_refused_and_a_half_pair_is_named() {
        let tls = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = redis_client("redis://127.0.0.1:6379", &tls).unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        let e = redis_client("rediss://127.0.0.1:6379", &tls).unwrap_err();
        assert!(e.to_string().contains("redis.tls.ca_file"), "{e}");
        let half = TlsFiles {
            cert_file: Some("/x".into()),
            ..Default::default()
        };
        let e = redis_client("rediss://127.0.0.1:6379", &half).unwrap_err();
        assert!(e.to_string().contains("redis.tls.key_file"), "{e}");
        assert_eq!(e.fault(), Fault::Config);
        // Plain and TLS URLs without files build (system roots for TLS).
        assert!(redis_client("redis://127.0.0.1:6379", &TlsFiles::default()).is_ok());
        assert!(redis_client("rediss://127.0.0.1:6379", &TlsFiles::default()).is_ok());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("inkstream-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = TlsFiles {
            ca_file: Some(path),
            ..Default::default()
        };
        let e = tls.load("notifications.tls").unwrap_err();
        assert!(
            e.to_string().contains("notifications.tls.ca_file")
                && e.to_string().contains("no certificate"),
            "{e}"
        );
    }
}
