//! ferry-shipper: the primary side of replication — the gRPC service that
//! streams durable WAL frames to each replica from the LSN it asks for and
//! tracks each replica's acknowledged LSNs.
//! Not yet built: this crate holds only its purpose for now.
