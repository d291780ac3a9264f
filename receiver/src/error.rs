//! The one error type of ferry-receiver.

use ferry_engine::EngineError;
use ferry_wal::WalError;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The primary's address is not a valid URI.
    #[error("bad primary address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    /// The primary's address does not fit the TLS settings (`https://`
    /// without a CA, `http://` with one), or they do not load.
    #[error(transparent)]
    Tls(#[from] ferry_proto::auth::AuthError),
    /// Connecting or the stream failed (reconnect with backoff).
    #[error("link: {0}")]
    Link(String),
    /// The primary sent frames that fail their checks; nothing was written.
    #[error("rejected frames: {0}")]
    RejectedFrames(String),
    /// The primary broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The primary belongs to another cluster than this node's data.
    #[error(
        "the primary belongs to cluster {primary}, this node's data to cluster {ours}; \
         refusing to follow it"
    )]
    OtherCluster { ours: String, primary: String },
    /// Recording the adopted cluster id failed.
    #[error("recording the cluster id: {0}")]
    Membership(String),
    /// The local log failed.
    #[error("wal: {0}")]
    Wal(#[from] WalError),
    /// A snapshot chunk or file failed its checksum, or the snapshot does
    /// not hold what its manifest says; it is fetched again.
    #[error("bad snapshot: {0}")]
    BadSnapshot(String),
    /// A staging file could not be written or read.
    #[error("{0}")]
    Io(String),
    /// The local engine failed.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
}

pub type Result<T, E = ReceiveError> = std::result::Result<T, E>;
