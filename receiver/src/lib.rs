//! ferry-receiver: the replica side of replication — connects to a primary,
//! verifies and appends its WAL frames to the local WAL, applies them to the
//! engine, acknowledges, and reconnects with backoff.
//! Not yet built: this crate holds only its purpose for now.
