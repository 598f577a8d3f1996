//! The wire contract of DESIGN §4: generated `privacy.v1` types and gRPC stubs, the encoded
//! descriptor set (for reflection and the proto3 JSON mapping), the catalogue of user event
//! types, and the contract checks every ingest path applies before anything is stored.
//!
//! Layout: [`v1`] is generated from `proto/`; [`event_type`] names every user event and maps it
//! to its payload and NATS subject; [`decode`] turns message bytes (protobuf or JSON) into an
//! [`v1::Envelope`]; [`validate`] checks an envelope and names the offending field.

#![forbid(unsafe_code)]

pub mod decode;
pub mod event_type;
pub mod validate;

/// Generated protobuf types and gRPC stubs of package `privacy.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("privacy.v1");
}

/// A raw echo service, the floor of the gRPC benchmarks; not part of the wire contract.
#[allow(clippy::all, missing_docs)]
pub mod bench {
    tonic::include_proto!("privacy.bench.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` in `proto/` (served by reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/privacy_descriptor.bin"));

pub use decode::{DecodeError, Encoding, decode_envelope};
pub use event_type::EventType;
pub use validate::{Limits, Rejection, RejectionCode, validate_envelope};
