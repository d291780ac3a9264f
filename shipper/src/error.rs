//! The one error type of ferry-shipper, and its one mapping to gRPC.

use ferry_proto::v1::refusal::Reason;
use ferry_wal::WalError;

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The replica's hello was refused; the reason goes back to it.
    #[error("{message}")]
    Refused { reason: Reason, message: String },
    /// The replica's stream ended or broke.
    #[error("the replica's stream ended: {0}")]
    StreamEnded(String),
    /// The replica sent no ack for too long.
    #[error("no ack from the replica for {ms} ms")]
    Stalled { ms: u64 },
    /// An operator disconnected the replica.
    #[error("disconnected by an operator")]
    Disconnected,
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Reading the log failed.
    #[error("wal: {0}")]
    Wal(#[from] WalError),
    /// A file (slots, a snapshot) or the engine failed.
    #[error("{0}")]
    Io(String),
}

impl From<ShipError> for tonic::Status {
    fn from(err: ShipError) -> tonic::Status {
        match &err {
            ShipError::Refused { .. } => tonic::Status::failed_precondition(err.to_string()),
            ShipError::Wal(WalError::NotRetained { .. }) => {
                tonic::Status::out_of_range(err.to_string())
            }
            ShipError::Stalled { .. } => tonic::Status::deadline_exceeded(err.to_string()),
            ShipError::Disconnected | ShipError::ShuttingDown => {
                tonic::Status::unavailable(err.to_string())
            }
            ShipError::StreamEnded(_) => tonic::Status::cancelled(err.to_string()),
            ShipError::Wal(_) | ShipError::Io(_) => tonic::Status::internal(err.to_string()),
        }
    }
}

pub type Result<T, E = ShipError> = std::result::Result<T, E>;
