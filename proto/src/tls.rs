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
//! file stops a node at start, not at its first connection. They are read
//! again on [`Tls::reload`] (a node's SIGHUP), so certificates are rotated
//! without a restart: connections made after it use the new files, those
//! open keep going, and files that fail the checks leave the old ones in
//! use.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

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

/// The TLS versions a node serves (`--tls-protocols`, as Redis's
/// `tls-protocols`): TLSv1.2 and TLSv1.3 unless told otherwise. Older ones
/// are never served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsProtocols {
    v1_2: bool,
    v1_3: bool,
}

impl Default for TlsProtocols {
    fn default() -> TlsProtocols {
        TlsProtocols {
            v1_2: true,
            v1_3: true,
        }
    }
}

impl FromStr for TlsProtocols {
    type Err = String;

    /// Redis's form: names separated by spaces (`"TLSv1.2 TLSv1.3"`).
    fn from_str(s: &str) -> Result<TlsProtocols, String> {
        let mut protocols = TlsProtocols {
            v1_2: false,
            v1_3: false,
        };
        for name in s.split_whitespace() {
            if name.eq_ignore_ascii_case("TLSv1.2") {
                protocols.v1_2 = true;
            } else if name.eq_ignore_ascii_case("TLSv1.3") {
                protocols.v1_3 = true;
            } else if name.eq_ignore_ascii_case("TLSv1") || name.eq_ignore_ascii_case("TLSv1.1") {
                return Err(format!(
                    "{name}: ferry serves TLSv1.2 and TLSv1.3 only (older versions are unsafe)"
                ));
            } else {
                return Err(format!(
                    "{name:?}: expected TLSv1.2, TLSv1.3 or both, separated by a space"
                ));
            }
        }
        if !(protocols.v1_2 || protocols.v1_3) {
            return Err("no TLS version given: expected TLSv1.2, TLSv1.3 or both".into());
        }
        Ok(protocols)
    }
}

impl TlsProtocols {
    /// The versions served, by name, in `--tls-protocols`' order.
    fn served(
        self,
    ) -> impl Iterator<Item = (&'static str, &'static rustls::SupportedProtocolVersion)> {
        [
            (self.v1_2, "TLSv1.2", &rustls::version::TLS12),
            (self.v1_3, "TLSv1.3", &rustls::version::TLS13),
        ]
        .into_iter()
        .filter_map(|(on, name, version)| on.then_some((name, version)))
    }

    fn versions(self) -> Vec<&'static rustls::SupportedProtocolVersion> {
        self.served().map(|(_, version)| version).collect()
    }
}

/// Cipher suites by the names OpenSSL (and so Redis's `tls-ciphers` and
/// `tls-ciphersuites`) gives them, for those rustls has: every one an AEAD
/// with forward secrecy.
const SUITE_NAMES: &[(&str, rustls::CipherSuite)] = &[
    (
        "TLS_AES_256_GCM_SHA384",
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_AES_128_GCM_SHA256",
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The cipher suites a node serves, per TLS version: `--tls-ciphers`
/// (TLSv1.2) and `--tls-ciphersuites` (TLSv1.3), as Redis's settings of
/// those names; `None`: all of rustls's for that version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsCiphers {
    tls12: Option<Vec<rustls::CipherSuite>>,
    tls13: Option<Vec<rustls::CipherSuite>>,
}

impl TlsCiphers {
    /// The suites given for each version (`None`: all).
    pub fn new(tls12: Option<CipherSuites>, tls13: Option<CipherSuites>) -> TlsCiphers {
        TlsCiphers {
            tls12: tls12.map(|s| s.0),
            tls13: tls13.map(|s| s.0),
        }
    }

    /// `names` (separated by `:`, as OpenSSL's lists) as suites of TLS
    /// version `v1_3` or TLSv1.2.
    ///
    /// # Errors
    ///
    /// A name rustls lacks, or one of the other version, naming those it has.
    pub fn parse(names: &str, v1_3: bool) -> Result<CipherSuites, String> {
        let (flag, other) = if v1_3 {
            ("--tls-ciphersuites", "--tls-ciphers")
        } else {
            ("--tls-ciphers", "--tls-ciphersuites")
        };
        let of_version = |suite: &rustls::CipherSuite| is_tls13(*suite) == v1_3;
        let known: Vec<&str> = SUITE_NAMES
            .iter()
            .filter(|(_, suite)| of_version(suite))
            .map(|(name, _)| *name)
            .collect();
        let mut suites = Vec::new();
        for name in names.split(':').map(str::trim).filter(|n| !n.is_empty()) {
            let found = SUITE_NAMES
                .iter()
                .find(|(n, suite)| {
                    n.eq_ignore_ascii_case(name) || format!("{suite:?}").eq_ignore_ascii_case(name)
                })
                .map(|(_, suite)| *suite);
            match found {
                Some(suite) if of_version(&suite) => suites.push(suite),
                Some(_) => {
                    return Err(format!(
                        "{name} is a suite of the other TLS version: give it in {other}"
                    ));
                }
                None => {
                    return Err(format!(
                        "{name:?} is not a cipher suite ferry serves; {flag} takes {}, separated by ':'",
                        known.join(", ")
                    ));
                }
            }
        }
        if suites.is_empty() {
            return Err(format!("{flag}: no cipher suite given"));
        }
        Ok(CipherSuites(suites))
    }

    /// The suites of TLS version `v1_3` (or TLSv1.2) as OpenSSL names
    /// them, separated by `:`; empty for all (Redis's default).
    pub fn names(&self, v1_3: bool) -> String {
        let given = if v1_3 { &self.tls13 } else { &self.tls12 };
        given
            .iter()
            .flatten()
            .filter_map(|suite| SUITE_NAMES.iter().find(|(_, s)| s == suite))
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(":")
    }

    /// rustls's provider, serving the suites given only.
    fn provider(&self) -> rustls::crypto::CryptoProvider {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites.retain(|supported| {
            let suite = supported.suite();
            let given = if is_tls13(suite) {
                &self.tls13
            } else {
                &self.tls12
            };
            given.as_ref().is_none_or(|given| given.contains(&suite))
        });
        provider
    }
}

/// Cipher suites of one TLS version, as [`TlsCiphers::parse`] read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipherSuites(Vec<rustls::CipherSuite>);

/// Whether `suite` is one of TLSv1.3's.
fn is_tls13(suite: rustls::CipherSuite) -> bool {
    format!("{suite:?}").starts_with("TLS13_")
}

impl std::fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientAuth::Required => "yes",
            ClientAuth::Optional => "optional",
            ClientAuth::None => "no",
        })
    }
}

impl std::fmt::Display for TlsProtocols {
    /// As `--tls-protocols` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.served().map(|(name, _)| name).collect();
        f.write_str(&names.join(" "))
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
/// Clones share one set of files: a [`Tls::reload`] reaches them all.
#[derive(Clone, Default)]
pub struct Tls(Option<Arc<Settings>>);

struct Settings {
    files: TlsFiles,
    client_auth: ClientAuth,
    protocols: TlsProtocols,
    ciphers: TlsCiphers,
    /// What the files held when last read.
    current: RwLock<Arc<Loaded>>,
}

/// The files as read and checked once.
struct Loaded {
    identity: Option<Identity>,
    ca: Option<Certificate>,
    /// What a TLS listener of the Redis protocol serves with (built from
    /// the same files, for a node that has them).
    resp: Option<Arc<rustls::ServerConfig>>,
    /// What the gRPC server serves with: the same, speaking HTTP/2.
    grpc: Option<Arc<rustls::ServerConfig>>,
    certificates: Certificates,
}

/// The certificates in the files, as last read (DER).
#[derive(Debug, Clone, Default)]
pub struct Certificates {
    /// The node's or tool's own chain, its certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The CA's.
    pub ca: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Tls {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("serves", &self.serves())
            .field("calls_over_tls", &self.calls_over_tls())
            .field("client_auth", &self.0.as_ref().map(|s| s.client_auth))
            .finish()
    }
}

/// The protocol a gRPC server names in the TLS handshake (ALPN).
const ALPN_H2: &[u8] = b"h2";

/// The PEM marker each file must hold.
const CERTIFICATE_PEM: &str = "-----BEGIN CERTIFICATE-----";
const KEY_PEM: &str = "PRIVATE KEY-----";
/// A key only a passphrase opens.
const ENCRYPTED_KEY_PEM: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";

fn contains(bytes: &[u8], marker: &str) -> bool {
    bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
}

/// A PEM file as given to `flag`.
struct PemFile {
    flag: &'static str,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl PemFile {
    fn read(flag: &'static str, path: &Path, marker: &str) -> Result<PemFile, AuthError> {
        let file = PemFile {
            flag,
            path: path.to_path_buf(),
            bytes: Vec::new(),
        };
        let bytes = std::fs::read(path).map_err(|e| file.error(e.to_string()))?;
        if marker == KEY_PEM && contains(&bytes, ENCRYPTED_KEY_PEM) {
            return Err(file.error(
                "the key is encrypted: give it without a passphrase (and readable by this user only)"
                    .into(),
            ));
        }
        if !contains(&bytes, marker) {
            let what = if marker == KEY_PEM {
                "private key"
            } else {
                "certificate"
            };
            return Err(file.error(format!("no PEM {what} in it")));
        }
        Ok(PemFile { bytes, ..file })
    }

    fn error(&self, reason: String) -> AuthError {
        AuthError::TlsFile {
            flag: self.flag,
            path: self.path.clone(),
            reason,
        }
    }

    /// Its certificates, in order.
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, AuthError> {
        CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("a certificate that does not parse: {e}")))
    }
}

/// Checks what rustls would only find out at the first connection: that
/// the CA holds a usable certificate, and that the node's own certificate
/// passes the check its peers make of it against the CA (signed by it,
/// within its dates, good for calling).
fn check_chain(cert: Option<&PemFile>, ca: &PemFile) -> Result<(), AuthError> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(ca.certificates()?);
    if added == 0 {
        return Err(ca.error("no usable CA certificate in it".into()));
    }
    let Some(cert) = cert else {
        return Ok(());
    };
    let chain = cert.certificates()?;
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return Err(cert.error("no PEM certificate in it".into()));
    };
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| ca.error(e.to_string()))?;
    verifier
        .verify_client_cert(end_entity, intermediates, UnixTime::now())
        .map_err(|e| {
            cert.error(format!(
                "peers would refuse it ({e}): it must be signed by --tls-ca-cert-file {}, within its dates, and good for client authentication",
                ca.path.display()
            ))
        })?;
    Ok(())
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

/// Whether a call's error text says its TLS handshake failed: a
/// certificate refused either way, an alert, or (TLS 1.3, where the server
/// checks the caller's certificate after the handshake seemed done) the
/// connection closing at the first call.
pub fn handshake_failed(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    [
        "certificate",
        "alert",
        "handshake",
        "connection closed",
        "broken pipe",
    ]
    .iter()
    .any(|sign| error.contains(sign))
}

/// The rustls configuration a TLS listener serves with: the node's
/// certificate, and the check of its callers' certificates that
/// `client_auth` asks for.
fn server_config(
    cert: &PemFile,
    key: &PemFile,
    ca: Option<&PemFile>,
    client_auth: ClientAuth,
    protocols: TlsProtocols,
    ciphers: &TlsCiphers,
) -> Result<Arc<rustls::ServerConfig>, AuthError> {
    let settings = |e: &dyn std::fmt::Display| {
        AuthError::TlsSettings(format!("the certificate, key or CA cannot serve TLS: {e}"))
    };
    let chain = cert.certificates()?;
    let private = PrivateKeyDer::from_pem_slice(&key.bytes)
        .map_err(|e| key.error(format!("a key that does not parse: {e}")))?;
    let provider = Arc::new(ciphers.provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocols.versions())
        .map_err(|e| settings(&e))?;
    let builder = match ca {
        Some(ca) if client_auth != ClientAuth::None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(ca.certificates()?);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| settings(&e))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, private)
        .map_err(|e| settings(&e))?;
    Ok(Arc::new(config))
}

/// Reads and checks `files` (see [`Tls::load`]); `None` if none are given.
fn read(
    files: &TlsFiles,
    client_auth: ClientAuth,
    protocols: TlsProtocols,
    ciphers: &TlsCiphers,
) -> Result<Option<Loaded>, AuthError> {
    let (cert, key) = match (&files.cert, &files.key) {
        (None, None) => (None, None),
        (Some(cert), Some(key)) => (
            Some(PemFile::read("--tls-cert-file", cert, CERTIFICATE_PEM)?),
            Some(PemFile::read("--tls-key-file", key, KEY_PEM)?),
        ),
        _ => {
            return Err(AuthError::TlsSettings(
                "--tls-cert-file and --tls-key-file go together".into(),
            ));
        }
    };
    let ca = match &files.ca {
        Some(ca) => Some(PemFile::read("--tls-ca-cert-file", ca, CERTIFICATE_PEM)?),
        None => None,
    };
    if let Some(ca) = &ca {
        check_chain(cert.as_ref(), ca)?;
    }
    let resp = match (&cert, &key) {
        (Some(cert), Some(key)) => Some(server_config(
            cert,
            key,
            ca.as_ref(),
            client_auth,
            protocols,
            ciphers,
        )?),
        _ => None,
    };
    let grpc = resp.as_ref().map(|resp| {
        let mut config = rustls::ServerConfig::clone(resp);
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(config)
    });
    let certificates = Certificates {
        chain: match &cert {
            Some(cert) => cert.certificates()?,
            None => Vec::new(),
        },
        ca: match &ca {
            Some(ca) => ca.certificates()?,
            None => Vec::new(),
        },
    };
    let identity = cert
        .zip(key)
        .map(|(cert, key)| Identity::from_pem(cert.bytes, key.bytes));
    let ca = ca.map(|ca| Certificate::from_pem(ca.bytes));
    if identity.is_none() && ca.is_none() {
        return Ok(None);
    }
    let loaded = Loaded {
        identity,
        ca,
        resp,
        grpc,
        certificates,
    };
    // rustls reads the files now, not at the first call.
    if let Some(ca) = &loaded.ca {
        over_tls(Endpoint::from_static("https://localhost"), &loaded, ca)?;
    }
    Ok(Some(loaded))
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
        Tls::load_serving(
            files,
            client_auth,
            TlsProtocols::default(),
            TlsCiphers::default(),
        )
    }

    /// As [`Tls::load`], serving the TLS versions of `protocols` and the
    /// cipher suites of `ciphers` only.
    ///
    /// # Errors
    ///
    /// As [`Tls::load`].
    pub fn load_serving(
        files: &TlsFiles,
        client_auth: ClientAuth,
        protocols: TlsProtocols,
        ciphers: TlsCiphers,
    ) -> Result<Tls, AuthError> {
        Ok(Tls(read(files, client_auth, protocols, &ciphers)?.map(
            |loaded| {
                Arc::new(Settings {
                    files: files.clone(),
                    client_auth,
                    protocols,
                    ciphers,
                    current: RwLock::new(Arc::new(loaded)),
                })
            },
        )))
    }

    /// Reads the files again, with the checks of [`Tls::load`], and uses
    /// them for the connections made from now on. Returns whether there
    /// were files to read.
    ///
    /// # Errors
    ///
    /// As [`Tls::load`]; the files read before stay in use.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let Some(settings) = &self.0 else {
            return Ok(false);
        };
        // The same paths as at load: there are files to read.
        let Some(loaded) = read(
            &settings.files,
            settings.client_auth,
            settings.protocols,
            &settings.ciphers,
        )?
        else {
            return Ok(false);
        };
        *settings
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Ok(true)
    }

    /// The key file given, if any.
    pub fn key_file(&self) -> Option<&Path> {
        self.0.as_ref().and_then(|s| s.files.key.as_deref())
    }

    /// The files given (none without TLS).
    pub fn files(&self) -> TlsFiles {
        self.0.as_ref().map(|s| s.files.clone()).unwrap_or_default()
    }

    /// The check of callers' certificates (the default without TLS).
    pub fn client_auth(&self) -> ClientAuth {
        self.0.as_ref().map(|s| s.client_auth).unwrap_or_default()
    }

    /// The TLS versions served (the default without TLS).
    pub fn protocols(&self) -> TlsProtocols {
        self.0.as_ref().map(|s| s.protocols).unwrap_or_default()
    }

    /// The cipher suites served (all without TLS).
    pub fn ciphers(&self) -> TlsCiphers {
        self.0
            .as_ref()
            .map(|s| s.ciphers.clone())
            .unwrap_or_default()
    }

    /// The files as last read.
    fn loaded(&self) -> Option<Arc<Loaded>> {
        self.0.as_ref().map(|settings| {
            settings
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Whether the node serves TLS (it has a certificate and key).
    pub fn serves(&self) -> bool {
        self.loaded().is_some_and(|l| l.identity.is_some())
    }

    /// Whether the node or tool calls others over TLS (it has a CA).
    pub fn calls_over_tls(&self) -> bool {
        self.loaded().is_some_and(|l| l.ca.is_some())
    }

    /// The scheme of the addresses this node calls: `https` with a CA.
    pub fn scheme(&self) -> &'static str {
        if self.calls_over_tls() {
            "https"
        } else {
            "http"
        }
    }

    /// `addr` as a URL: as given if it has a scheme, else in the scheme
    /// this node or tool calls in.
    pub fn url(&self, addr: &str) -> String {
        if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{}://{addr}", self.scheme())
        }
    }

    /// What a TLS listener of the Redis protocol serves with, if the node
    /// has a certificate: the same certificate, and the same check of
    /// clients' certificates as the gRPC server's.
    pub fn resp_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.loaded().and_then(|l| l.resp.clone())
    }

    /// The certificates in the files as last read (none without TLS).
    pub fn certificates(&self) -> Certificates {
        self.loaded()
            .map(|l| l.certificates.clone())
            .unwrap_or_default()
    }

    /// What the gRPC server serves with, if it serves TLS.
    pub fn grpc_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.loaded().and_then(|l| l.grpc.clone())
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
        let bad = |reason: &str| AuthError::BadAddress {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if !matches!(endpoint.uri().scheme_str(), Some("http" | "https")) {
            return Err(bad("it needs a scheme, http:// or https://"));
        }
        if endpoint.uri().port_u16().is_none_or(|p| p == 0) {
            return Err(bad("it needs a port between 1 and 65535"));
        }
        let https = endpoint.uri().scheme_str() == Some("https");
        let loaded = self.loaded();
        match (
            https,
            loaded
                .as_deref()
                .and_then(|l| l.ca.as_ref().map(|ca| (l, ca))),
        ) {
            (false, None) => Ok(endpoint),
            (false, Some(_)) => Err(AuthError::Plaintext {
                url: url.to_string(),
            }),
            (true, None) => Err(AuthError::NoCa {
                url: url.to_string(),
            }),
            (true, Some((loaded, ca))) => over_tls(endpoint, loaded, ca),
        }
    }
}

/// `endpoint` calling over TLS: checking the node's certificate against
/// `ca`, presenting the caller's own if it has one.
fn over_tls(endpoint: Endpoint, loaded: &Loaded, ca: &Certificate) -> Result<Endpoint, AuthError> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .timeout(HANDSHAKE_TIMEOUT);
    // The name the certificate must hold: the host, without the brackets
    // of an IPv6 address.
    if let Some(host) = endpoint.uri().host()
        && host.starts_with('[')
    {
        config = config.domain_name(host.trim_matches(['[', ']']));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_parse_by_openssl_s_or_iana_s_names() {
        let tls12 = TlsCiphers::parse(
            "ecdhe-rsa-aes128-gcm-sha256:TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            false,
        )
        .unwrap();
        assert_eq!(
            tls12.0,
            [
                rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            ]
        );
        let tls13 = TlsCiphers::parse("TLS_CHACHA20_POLY1305_SHA256", true).unwrap();
        let ciphers = TlsCiphers::new(Some(tls12), Some(tls13));
        assert_eq!(
            ciphers.names(false),
            "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"
        );
        assert_eq!(ciphers.names(true), "TLS_CHACHA20_POLY1305_SHA256");
        assert_eq!(ciphers.provider().cipher_suites.len(), 3);
        assert_eq!(TlsCiphers::default().names(true), "");
        assert_eq!(
            TlsCiphers::default().provider().cipher_suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
        assert!(TlsCiphers::parse("TLS_AES_128_GCM_SHA256", false).is_err());
    }

    /// A CA and a loopback certificate it signed (valid `from..until`
    /// years), as PEM files in `dir`: (CA, certificate, key).
    fn files(dir: &Path, name: &str, years: (i32, i32)) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("::1".parse().unwrap()));
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let paths = (
            dir.join(format!("{name}-ca.pem")),
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&paths.0, ca_cert.pem()).unwrap();
        std::fs::write(&paths.1, cert.pem()).unwrap();
        std::fs::write(&paths.2, key.serialize_pem()).unwrap();
        paths
    }

    fn tls_files(ca: &Path, cert: &Path, key: &Path) -> TlsFiles {
        TlsFiles {
            cert: Some(cert.to_path_buf()),
            key: Some(key.to_path_buf()),
            ca: Some(ca.to_path_buf()),
        }
    }

    #[test]
    fn addresses_must_fit_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = files(dir.path(), "node", (2020, 2200));
        let tls = Tls::load(&tls_files(&ca, &cert, &key), ClientAuth::Required).unwrap();
        assert!(tls.serves() && tls.calls_over_tls());
        assert_eq!(tls.scheme(), "https");
        // An IPv6 address is checked against the certificate without its
        // brackets.
        tls.endpoint("https://[::1]:7379").expect("IPv6 over TLS");
        tls.endpoint("https://localhost:7379").expect("a name");
        assert!(matches!(
            tls.endpoint("http://localhost:7379"),
            Err(AuthError::Plaintext { .. })
        ));
        let plain = Tls::default();
        assert_eq!(plain.scheme(), "http");
        plain.endpoint("http://localhost:7379").expect("plain");
        assert!(matches!(
            plain.endpoint("https://localhost:7379"),
            Err(AuthError::NoCa { .. })
        ));
        assert!(format!("{tls:?}").contains("serves: true"));
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn certificates_peers_would_refuse_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _, _) = files(dir.path(), "cluster", (2020, 2200));
        let (_, other_cert, other_key) = files(dir.path(), "other", (2020, 2200));
        let err = Tls::load(
            &tls_files(&ca, &other_cert, &other_key),
            ClientAuth::Required,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("UnknownIssuer"), "{err}");
        assert!(err.contains("--tls-cert-file"), "{err}");
        let (old_ca, old_cert, old_key) = files(dir.path(), "old", (2001, 2002));
        let err = Tls::load(
            &tls_files(&old_ca, &old_cert, &old_key),
            ClientAuth::Required,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("certificate expired"), "{err}");
        // A CA file whose certificate does not parse.
        let bad_ca = dir.path().join("bad-ca.pem");
        std::fs::write(
            &bad_ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let only_ca = TlsFiles {
            ca: Some(bad_ca),
            ..TlsFiles::default()
        };
        let err = Tls::load(&only_ca, ClientAuth::Required)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-ca-cert-file"), "{err}");
        // An encrypted key is named as such.
        let encrypted = dir.path().join("encrypted.key");
        std::fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let (ca, cert, _) = files(dir.path(), "node", (2020, 2200));
        let err = Tls::load(&tls_files(&ca, &cert, &encrypted), ClientAuth::Required)
            .unwrap_err()
            .to_string();
        assert!(err.contains("encrypted"), "{err}");
    }

    /// A reload swaps in files that pass the checks, for every clone, and
    /// keeps the files read before when the new ones fail them.
    #[test]
    fn a_reload_takes_good_files_and_keeps_the_old_on_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = files(dir.path(), "a", (2020, 2200));
        let tls = Tls::load(&tls_files(&ca, &cert, &key), ClientAuth::Required).unwrap();
        let first = tls.resp_config().unwrap();
        let clone = tls.clone();
        std::fs::write(&key, "not a key").unwrap();
        let err = clone.reload().unwrap_err().to_string();
        assert!(err.contains("--tls-key-file"), "{err}");
        assert!(Arc::ptr_eq(&first, &tls.resp_config().unwrap()));
        let (ca2, cert2, key2) = files(dir.path(), "b", (2020, 2200));
        for (from, to) in [(&ca2, &ca), (&cert2, &cert), (&key2, &key)] {
            std::fs::copy(from, to).unwrap();
        }
        assert!(clone.reload().unwrap());
        assert!(!Arc::ptr_eq(&first, &tls.resp_config().unwrap()));
        assert!(tls.serves() && tls.calls_over_tls());
        // gRPC speaks HTTP/2; the Redis protocol names none.
        assert_eq!(tls.grpc_config().unwrap().alpn_protocols, [b"h2".to_vec()]);
        assert!(tls.resp_config().unwrap().alpn_protocols.is_empty());
        assert!(!Tls::default().reload().unwrap());
    }
}
