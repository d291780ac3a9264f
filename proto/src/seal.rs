//! The seal on replication messages: a crc32 over each message's fields, so
//! a message corrupted on its way is refused before anything acts on it.
//!
//! WAL frames and snapshot chunks carry their own crc32s, but the fields
//! around them do not: a flipped bit in an `Accept`'s cluster id would be
//! adopted and kept by a new replica, one in an `Ack`'s applied LSN would let
//! a primary count a write as replicated. Every message of the replication
//! service carries a `crc32` field:
//!
//! ```text
//! crc32 = crc32(encoding of the message with crc32 = 0 and its payload empty)
//! ```
//!
//! The payload (`Frames.data`, `SnapshotChunk.data`) is left out because it
//! is checked on its own, frame by frame and chunk by chunk; a flip in its
//! length moves the fields after it, which the seal catches. The encoding is
//! prost's, which writes fields in tag order, so both ends compute it alike.
//!
//! The seal covers the fields the receiver knows: prost drops unknown ones
//! on decoding. So a field added to a sealed message breaks the seal with
//! peers that predate it: it may only be sent to a peer known to have it
//! (by the `version` its `Hello` carries, say), and a field added to `Hello`
//! itself needs a new message kind.

use bytes::Bytes;
use prost::Message;

use crate::v1::{
    PrimaryMessage, ReplicaMessage, SnapshotMessage, SnapshotRequest, primary_message,
    snapshot_message,
};

/// A message with a seal.
pub trait Sealed: Message + Sized {
    /// The message's `crc32` field.
    fn crc32_mut(&mut self) -> &mut u32;

    /// The field that carries its own checksums, if the message has one.
    fn payload_mut(&mut self) -> Option<&mut Bytes> {
        None
    }

    /// The seal this message's fields call for.
    fn seal_value(&mut self) -> u32 {
        let stored = std::mem::take(self.crc32_mut());
        let payload = self.payload_mut().map(std::mem::take);
        let value = crc32fast::hash(&self.encode_to_vec());
        if let (Some(payload), Some(field)) = (payload, self.payload_mut()) {
            *field = payload;
        }
        *self.crc32_mut() = stored;
        value
    }

    /// The message with its seal set: what is sent.
    fn sealed(mut self) -> Self {
        let value = self.seal_value();
        *self.crc32_mut() = value;
        self
    }

    /// Whether the seal matches the fields: what is received is checked.
    fn seal_holds(&mut self) -> bool {
        let stored = *self.crc32_mut();
        self.seal_value() == stored
    }
}

impl Sealed for PrimaryMessage {
    fn crc32_mut(&mut self) -> &mut u32 {
        &mut self.crc32
    }

    fn payload_mut(&mut self) -> Option<&mut Bytes> {
        match &mut self.msg {
            Some(primary_message::Msg::Frames(frames)) => Some(&mut frames.data),
            _ => None,
        }
    }
}

impl Sealed for ReplicaMessage {
    fn crc32_mut(&mut self) -> &mut u32 {
        &mut self.crc32
    }
}

impl Sealed for SnapshotRequest {
    fn crc32_mut(&mut self) -> &mut u32 {
        &mut self.crc32
    }
}

impl Sealed for SnapshotMessage {
    fn crc32_mut(&mut self) -> &mut u32 {
        &mut self.crc32
    }

    fn payload_mut(&mut self) -> Option<&mut Bytes> {
        match &mut self.msg {
            Some(snapshot_message::Msg::Chunk(chunk)) => Some(&mut chunk.data),
            _ => None,
        }
    }
}

/// A received message, or `DATA_LOSS` when its seal does not hold: for
/// `tonic::Streaming::message()` results and requests alike.
#[cfg(feature = "grpc")]
pub fn checked<M: Sealed>(
    received: Result<Option<M>, tonic::Status>,
) -> Result<Option<M>, tonic::Status> {
    match received {
        Ok(Some(mut m)) => {
            if m.seal_holds() {
                return Ok(Some(m));
            }
            let name = std::any::type_name::<M>()
                .rsplit("::")
                .next()
                .unwrap_or("message");
            let why = if *m.crc32_mut() == 0 {
                "it carries no seal (corrupted on the way, or sent by a version of ferry without seals)"
            } else {
                "corrupted on the way"
            };
            Err(tonic::Status::data_loss(format!(
                "a {name} failed its crc32 check: {why}"
            )))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Accept, Ack, EpochBegin, Frames, SnapshotChunk, replica_message};

    fn accept() -> PrimaryMessage {
        PrimaryMessage {
            msg: Some(primary_message::Msg::Accept(Accept {
                from_lsn: 7,
                cluster_id: "e85242ca73d33f176484ce0a8465f2fe9bf52acd".into(),
                node_id: "n1".into(),
                epoch: 3,
                durable_lsn: 90,
                epoch_history: vec![EpochBegin {
                    epoch: 3,
                    first_lsn: 40,
                }],
                resp_addr: "10.0.0.1:6379".into(),
            })),
            crc32: 0,
        }
        .sealed()
    }

    fn frames() -> PrimaryMessage {
        PrimaryMessage {
            msg: Some(primary_message::Msg::Frames(Frames {
                data: Bytes::from(vec![0xab; 300]),
                first_lsn: 10,
                last_lsn: 19,
                durable_lsn: 19,
            })),
            crc32: 0,
        }
        .sealed()
    }

    /// Every single-bit flip of the encoded message that still decodes to
    /// other fields breaks the seal, unless only the payload changed (its
    /// own crcs catch that).
    fn every_flip_outside_the_payload_is_caught<M: Sealed + Default + Clone + PartialEq>(sent: M) {
        assert!(sent.clone().seal_holds(), "a sealed message holds");
        let bytes = sent.encode_to_vec();
        let mut caught = 0;
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let Ok(mut m) = M::decode(flipped.as_slice()) else {
                continue;
            };
            let mut with_sent_payload = m.clone();
            if let (Some(p), Some(original)) = (
                with_sent_payload.payload_mut(),
                sent.clone().payload_mut().map(std::mem::take),
            ) {
                *p = original;
            }
            if with_sent_payload == sent {
                continue;
            }
            assert!(!m.seal_holds(), "bit {bit} flipped and the seal holds");
            caught += 1;
        }
        assert!(caught > 0, "no flip decoded to other fields");
    }

    #[test]
    fn a_flip_in_an_accept_breaks_its_seal() {
        every_flip_outside_the_payload_is_caught(accept());
    }

    #[test]
    fn a_flip_around_frames_breaks_the_seal_and_the_payload_is_left_out() {
        every_flip_outside_the_payload_is_caught(frames());
        // The payload is not part of the seal: it is checked frame by frame.
        let mut m = frames();
        if let Some(primary_message::Msg::Frames(f)) = &mut m.msg {
            f.data = Bytes::from(vec![0xcd; 300]);
        }
        assert!(m.seal_holds());
        // And sealing leaves the payload where it was.
        let Some(primary_message::Msg::Frames(f)) = frames().msg else {
            panic!("frames");
        };
        assert_eq!(f.data, Bytes::from(vec![0xab; 300]));
    }

    #[test]
    fn acks_requests_and_snapshot_messages_are_sealed() {
        every_flip_outside_the_payload_is_caught(
            ReplicaMessage {
                msg: Some(replica_message::Msg::Ack(Ack {
                    written_lsn: 1000,
                    flushed_lsn: 990,
                    applied_lsn: 980,
                })),
                crc32: 0,
            }
            .sealed(),
        );
        every_flip_outside_the_payload_is_caught(
            SnapshotRequest {
                cluster_id: "c1".into(),
                node_id: "n2".into(),
                snapshot_id: "s".into(),
                have_files: vec!["000001.sst".into()],
                resume_file: "000002.sst".into(),
                resume_offset: 4096,
                crc32: 0,
            }
            .sealed(),
        );
        every_flip_outside_the_payload_is_caught(
            SnapshotMessage {
                msg: Some(snapshot_message::Msg::Chunk(SnapshotChunk {
                    file: 1,
                    offset: 65536,
                    data: Bytes::from(vec![7; 100]),
                    crc32: 0x1234_5678,
                })),
                crc32: 0,
            }
            .sealed(),
        );
    }

    #[cfg(feature = "grpc")]
    #[test]
    fn checked_refuses_a_broken_seal_as_data_loss() {
        let good = accept();
        assert_eq!(checked(Ok(Some(good.clone()))).unwrap(), Some(good.clone()));
        let mut bad = good;
        bad.crc32 ^= 1;
        let err = checked(Ok(Some(bad))).unwrap_err();
        assert_eq!(err.code(), tonic::Code::DataLoss);
        assert!(
            err.message().contains("PrimaryMessage") && err.message().contains("corrupted"),
            "{}",
            err.message()
        );
        // A message without a seal says so.
        let mut unsealed = accept();
        unsealed.crc32 = 0;
        let err = checked(Ok(Some(unsealed))).unwrap_err();
        assert!(err.message().contains("no seal"), "{}", err.message());
        assert_eq!(checked::<PrimaryMessage>(Ok(None)).unwrap(), None);
    }
}
