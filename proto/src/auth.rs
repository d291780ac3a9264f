//! The cluster token: a shared secret that every gRPC call to a node (a
//! replica's stream, the status and admin services, the tools) carries as
//! `authorization: Bearer TOKEN` when the node is given one, as Redis's
//! `masterauth` matches its `requirepass`. A node without one asks for
//! none; its health service never does.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The metadata key the token travels in.
pub const HEADER: &str = "authorization";

/// Why a token or the TLS settings cannot be used, or a node cannot be
/// called as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a cluster token must be 1 or more printable ASCII characters, without spaces")]
    InvalidToken,
    #[error("{flag} {}: {reason}", path.display())]
    TlsFile {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    TlsSettings(String),
    #[error("{url:?} is not a gRPC address: {reason}")]
    BadAddress { url: String, reason: String },
    #[error(
        "{url} is reached over TLS (https), and there is no CA to check its certificate against: give --tls-ca-cert-file"
    )]
    NoCa { url: String },
    #[error(
        "{url} is not encrypted, and calls go over TLS here (--tls-ca-cert-file): give its https:// address"
    )]
    Plaintext { url: String },
}

/// The header value a token travels as.
///
/// # Errors
///
/// [`AuthError::InvalidToken`] for an empty token or one with spaces or
/// characters outside printable ASCII.
pub fn header_value(token: &str) -> Result<AsciiMetadataValue, AuthError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::InvalidToken);
    }
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| AuthError::InvalidToken)
}

/// A client's interceptor: adds the token to every call (nothing without
/// one).
#[derive(Debug, Clone, Default)]
pub struct Attach(Option<AsciiMetadataValue>);

impl Attach {
    /// # Errors
    ///
    /// [`AuthError::InvalidToken`].
    pub fn new(token: Option<&str>) -> Result<Attach, AuthError> {
        Ok(Attach(token.map(header_value).transpose()?))
    }
}

impl Interceptor for Attach {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(HEADER, value.clone());
        }
        Ok(request)
    }
}

/// A server's interceptor: refuses calls without the token
/// (`UNAUTHENTICATED`), or lets every call in when the node has none.
#[derive(Debug, Clone, Default)]
pub struct Check(Option<Arc<[u8]>>);

impl Check {
    /// # Errors
    ///
    /// [`AuthError::InvalidToken`].
    pub fn new(token: Option<&str>) -> Result<Check, AuthError> {
        Ok(Check(
            token
                .map(header_value)
                .transpose()?
                .map(|v| Arc::from(v.as_bytes())),
        ))
    }
}

/// Equal bytes, in a time that does not depend on where they differ (for
/// comparing secrets; only the lengths show).
pub fn same(a: &[u8], b: &[u8]) -> bool {
    let differ = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(differ) == 0 && a.len() == b.len()
}

/// Whether an HTTP `Authorization` header value carries `token` as a
/// bearer token (the scheme's name in any case, as HTTP allows).
pub fn bearer_matches(header: &str, token: &str) -> bool {
    match header.trim().split_once(' ') {
        Some((scheme, credentials)) if scheme.eq_ignore_ascii_case("bearer") => {
            same(credentials.trim().as_bytes(), token.as_bytes())
        }
        _ => false,
    }
}

impl Interceptor for Check {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else {
            return Ok(request);
        };
        match request.metadata().get(HEADER) {
            Some(got) if same(got.as_bytes(), want) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "wrong cluster token: the node called was started with another --cluster-token",
            )),
            None => Err(Status::unauthenticated(
                "the node called requires a cluster token (--cluster-token)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(check: &mut Check, attach: &mut Attach) -> Result<(), tonic::Code> {
        let request = attach.call(Request::new(())).expect("attach");
        check.call(request).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn calls_need_the_token_only_where_one_is_set() {
        let mut open = Check::new(None).unwrap();
        let mut closed = Check::new(Some("s3cret")).unwrap();
        let (mut none, mut right, mut wrong) = (
            Attach::new(None).unwrap(),
            Attach::new(Some("s3cret")).unwrap(),
            Attach::new(Some("s3cres")).unwrap(),
        );
        assert_eq!(call(&mut open, &mut none), Ok(()));
        assert_eq!(call(&mut open, &mut right), Ok(()));
        assert_eq!(call(&mut closed, &mut right), Ok(()));
        assert_eq!(
            call(&mut closed, &mut none),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut closed, &mut wrong),
            Err(tonic::Code::Unauthenticated)
        );
        let mut longer = Attach::new(Some("s3cret2")).unwrap();
        assert_eq!(
            call(&mut closed, &mut longer),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn bearer_headers_match_their_token_only() {
        assert!(bearer_matches("Bearer t0k", "t0k"));
        assert!(bearer_matches("bearer  t0k ", "t0k"));
        for bad in ["Bearer t0", "Bearer t0kk", "Basic t0k", "t0k", "", "Bearer"] {
            assert!(!bearer_matches(bad, "t0k"), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_printable_ascii_without_spaces() {
        assert!(header_value("a-Z_0.9~!").is_ok());
        for bad in ["", "two words", "tab\t", "é", "line\n"] {
            assert_eq!(header_value(bad), Err(AuthError::InvalidToken), "{bad:?}");
        }
    }
}
