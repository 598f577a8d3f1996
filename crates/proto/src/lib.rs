//! The wire contract of DESIGN §4: generated `privacy.v1` types and gRPC stubs, the encoded
//! descriptor set (for reflection and the proto3 JSON mapping), the catalogue of user event
//! types, and the contract checks every ingest path applies before anything is stored.
//!
//! Layout: [`v1`] is generated from `proto/`; [`catalogue`] names every user and domain event: payload,
//! consumers, personal fields and required fields, written once; [`decode`] turns message bytes (protobuf or JSON) into an
//! [`v1::Envelope`]; [`validate`] checks an envelope and names the offending field.

#![forbid(unsafe_code)]

pub mod catalogue;
pub mod decode;
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

pub use catalogue::{DomainBody, EventType, UserEvent};
pub use decode::{
    DecodeError, Encoding, EnvelopeHead, EnvelopeHeadRef, decode_envelope, encoded_to_json,
    message_to_json,
};
pub use validate::{Limits, Rejection, RejectionCode, validate_envelope};
