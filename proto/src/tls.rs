//! TLS on the gRPC channel between nodes, and from the tools to them, as
//! Redis's `tls-*` settings give it:
//! - a node with a certificate and key (`--tls-cert-file`,
//!   `--tls-key-file`) serves TLS, and is reached at `https://`;
//! - with a CA (`--tls-ca-cert-file`), a node or tool checks the
//!   certificate of each node it calls against it, presents its own if it
//!   has one, and calls over TLS only (an `http://` address is refused);
//! - a node serving TLS with a CA asks its callers for a certificate the CA
//!   signed (mutual TLS) unless `--tls-auth-clients` says `optional` or `no`.
//!
//! The files are read and checked when the settings are loaded, so a bad
//! file stops a node at start, not at its first connection.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::auth::AuthError;

/// How long a TLS handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a node serving TLS with a CA asks its callers for a certificate
/// (`--tls-auth-clients`, as Redis's `tls-auth-clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Every caller presents one the CA signed (`yes`).
    #[default]
    Required,
    /// A caller may present none; one it presents must be signed by the CA
    /// (`optional`).
    Optional,
    /// None is asked for (`no`).
    None,
}

impl FromStr for ClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<ClientAuth, String> {
        match s {
            "yes" => Ok(ClientAuth::Required),
            "optional" => Ok(ClientAuth::Optional),
            "no" => Ok(ClientAuth::None),
            _ => Err(format!("{s:?}: expected yes, optional or no")),
        }
    }
}

/// The PEM files a node or tool is given.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Its certificate (chain), served and presented to the nodes it calls.
    pub cert: Option<PathBuf>,
    /// The certificate's private key.
    pub key: Option<PathBuf>,
    /// The CA (one or more certificates) the certificates of the nodes it
    /// calls, and of its callers, must chain to.
    pub ca: Option<PathBuf>,
}

/// Loaded TLS settings; the default is none (plain TCP, `http://`).
#[derive(Clone, Default)]
pub struct Tls(Option<Arc<Loaded>>);

struct Loaded {
    identity: Option<Identity>,
    ca: Option<Certificate>,
    client_auth: ClientAuth,
}

impl std::fmt::Debug for Tls {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("serves", &self.serves())
            .field("calls_over_tls", &self.calls_over_tls())
            .field("client_auth", &self.0.as_ref().map(|l| l.client_auth))
            .finish()
    }
}

/// The PEM marker each file must hold.
const CERTIFICATE_PEM: &str = "-----BEGIN CERTIFICATE-----";
const KEY_PEM: &str = "PRIVATE KEY-----";

fn read_pem(flag: &'static str, path: &Path, marker: &str) -> Result<Vec<u8>, AuthError> {
    let file_error = |reason: String| AuthError::TlsFile {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    if !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
        let what = if marker == KEY_PEM {
            "private key"
        } else {
            "certificate"
        };
        return Err(file_error(format!("no PEM {what} in it")));
    }
    Ok(bytes)
}

/// An error and its causes, as one line (tonic's transport errors say
/// little without them).
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // tonic's transport errors say only that at the top.
    if text == "transport error"
        && let Some(cause) = source
    {
        text = cause.to_string();
        source = cause.source();
    }
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

impl Tls {
    /// Reads and checks `files`.
    ///
    /// # Errors
    ///
    /// [`AuthError::TlsFile`] for a file that cannot be read or holds no
    /// PEM of its kind; [`AuthError::TlsSettings`] for a certificate without
    /// its key (or the other way round), or files rustls refuses (a key
    /// that does not parse, a CA that is not a certificate).
    pub fn load(files: &TlsFiles, client_auth: ClientAuth) -> Result<Tls, AuthError> {
        let identity = match (&files.cert, &files.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read_pem("--tls-cert-file", cert, CERTIFICATE_PEM)?,
                read_pem("--tls-key-file", key, KEY_PEM)?,
            )),
            _ => {
                return Err(AuthError::TlsSettings(
                    "--tls-cert-file and --tls-key-file go together".into(),
                ));
            }
        };
        let ca = match &files.ca {
            Some(ca) => Some(Certificate::from_pem(read_pem(
                "--tls-ca-cert-file",
                ca,
                CERTIFICATE_PEM,
            )?)),
            None => None,
        };
        if identity.is_none() && ca.is_none() {
            return Ok(Tls(None));
        }
        let tls = Tls(Some(Arc::new(Loaded {
            identity,
            ca,
            client_auth,
        })));
        // rustls reads the files now, not at the first connection.
        if let Some(config) = tls.server_config() {
            tonic::transport::Server::builder()
                .tls_config(config)
                .map_err(|e| {
                    AuthError::TlsSettings(format!(
                        "the certificate, key or CA cannot serve TLS: {}",
                        causes(&e)
                    ))
                })?;
        }
        if tls.calls_over_tls() {
            tls.endpoint("https://localhost")?;
        }
        Ok(tls)
    }

    /// Whether the node serves TLS (it has a certificate and key).
    pub fn serves(&self) -> bool {
        self.0.as_ref().is_some_and(|l| l.identity.is_some())
    }

    /// Whether the node or tool calls others over TLS (it has a CA).
    pub fn calls_over_tls(&self) -> bool {
        self.0.as_ref().is_some_and(|l| l.ca.is_some())
    }

    /// The scheme of the addresses this node calls: `https` with a CA.
    pub fn scheme(&self) -> &'static str {
        if self.calls_over_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// What the gRPC server serves with, if it serves TLS.
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        let loaded = self.0.as_deref()?;
        let identity = loaded.identity.clone()?;
        let config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        Some(match &loaded.ca {
            Some(ca) if loaded.client_auth != ClientAuth::None => config
                .client_ca_root(ca.clone())
                .client_auth_optional(loaded.client_auth == ClientAuth::Optional),
            _ => config,
        })
    }

    /// An endpoint for the node at `url`, over TLS for `https://`.
    ///
    /// # Errors
    ///
    /// [`AuthError::BadAddress`] for a `url` that is not a URI;
    /// [`AuthError::NoCa`] for `https://` without a CA;
    /// [`AuthError::Plaintext`] for `http://` with one.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, AuthError> {
        let endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|e| AuthError::BadAddress {
                url: url.to_string(),
                reason: causes(&e),
            })?;
        let https = endpoint.uri().scheme_str() == Some("https");
        let loaded = self.0.as_deref();
        match (https, loaded.and_then(|l| l.ca.as_ref().map(|ca| (l, ca)))) {
            (false, None) => Ok(endpoint),
            (false, Some(_)) => Err(AuthError::Plaintext {
                url: url.to_string(),
            }),
            (true, None) => Err(AuthError::NoCa {
                url: url.to_string(),
            }),
            (true, Some((loaded, ca))) => {
                let mut config = ClientTlsConfig::new()
                    .ca_certificate(ca.clone())
                    .timeout(HANDSHAKE_TIMEOUT);
                if let Some(identity) = &loaded.identity {
                    config = config.identity(identity.clone());
                }
                endpoint.tls_config(config).map_err(|e| {
                    AuthError::TlsSettings(format!(
                        "the CA, certificate or key cannot call over TLS: {}",
                        causes(&e)
                    ))
                })
            }
        }
    }
}
