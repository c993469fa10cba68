//! One endpoint's own TLS: a private CA bundle to trust instead of the
//! system roots, and a client certificate and key to present (mTLS).
//!
//! Values are PEM text, normally `${VAR}` references filled from a Secret.
//! File paths are not accepted: endpoint settings must never make the
//! dispatcher read local files (the same reason `ssl.*.location` is refused
//! for Kafka endpoints).
//!
//! Each distinct identity gets its own connection pool ([`super::HttpClient::for_tls`]),
//! so a connection opened with one endpoint's certificate is never reused
//! for another endpoint on the same host.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::HttpConfigError;

/// `tls:` of an HTTP endpoint.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndpointTls {
    /// PEM certificates to trust for this endpoint, instead of the system's.
    #[serde(default)]
    pub ca: Option<String>,
    /// PEM client certificate chain, leaf first (mTLS).
    #[serde(default)]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub client_key: Option<String>,
}

impl fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTls")
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client_cert.is_some())
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl EndpointTls {
    /// What tells identities apart in the pool cache: a digest of all three
    /// parts, so the key itself is not kept twice.
    pub(crate) fn identity(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [&self.ca, &self.client_cert, &self.client_key] {
            match part {
                Some(text) => {
                    h.update([1]);
                    h.update((text.len() as u64).to_be_bytes());
                    h.update(text.as_bytes());
                }
                None => h.update([0]),
            }
        }
        h.finalize().into()
    }

    /// The rustls configuration: `default_roots` unless `ca` replaces them,
    /// and the client certificate when one is set. Errors name the key and
    /// never quote PEM text.
    pub(crate) fn client_config(
        &self,
        default_roots: &RootCertStore,
    ) -> Result<ClientConfig, HttpConfigError> {
        let roots = match &self.ca {
            None => default_roots.clone(),
            Some(pem) => {
                let certs = certificates(pem, "tls.ca")?;
                let mut roots = RootCertStore::empty();
                for (i, cert) in certs.into_iter().enumerate() {
                    roots.add(cert).map_err(|e| {
                        HttpConfigError::new(
                            "tls.ca",
                            format!("certificate #{} is not a usable CA: {e}", i + 1),
                        )
                    })?;
                }
                roots
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpConfigError::new("tls", e.to_string()))?
            .with_root_certificates(roots);
        match (&self.client_cert, &self.client_key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(_), None) => Err(HttpConfigError::new(
                "tls.client_key",
                "is required with tls.client_cert",
            )),
            (None, Some(_)) => Err(HttpConfigError::new(
                "tls.client_cert",
                "is required with tls.client_key",
            )),
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, "tls.client_cert")?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                    HttpConfigError::new(
                        "tls.client_key",
                        "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    )
                })?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    HttpConfigError::new(
                        "tls.client_key",
                        format!("does not go with tls.client_cert: {e}"),
                    )
                })
            }
        }
    }
}

fn certificates(pem: &str, field: &str) -> Result<Vec<CertificateDer<'static>>, HttpConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| HttpConfigError::new(field, "is not valid PEM"))?;
    if certs.is_empty() {
        return Err(HttpConfigError::new(field, "holds no PEM certificate"));
    }
    Ok(certs)
}
