//! Helpers for a service's projections: decode a stored event's envelope (or only its head) with
//! an error that names the sequence number, so every view reports a bad record the same way.

use privacy_event_store::{RecordedEvent, StoreError};
use prost::Message;

/// Decodes a stored event as `M` (an `Envelope`, or an `EnvelopeHead` to skip the payload).
pub fn decode_stored<M: Message + Default>(event: &RecordedEvent) -> Result<M, StoreError> {
    M::decode(event.data.as_slice()).map_err(|e| StoreError::Corrupt {
        seq: event.seq,
        reason: format!("stored data is not an envelope: {e}"),
    })
}

/// Decodes a domain event's typed body, naming the event type when it does not decode.
pub fn decode_body<M: Message + Default>(
    event: &RecordedEvent,
    event_type: &str,
    body: &[u8],
) -> Result<M, StoreError> {
    M::decode(body).map_err(|e| StoreError::Corrupt {
        seq: event.seq,
        reason: format!("{event_type} body does not decode: {e}"),
    })
}

/// The tenant and id of a view key `tag tenant 0 id` (as an index of open work keeps them).
pub fn tenant_and_id(key: &[u8]) -> Option<(String, String)> {
    let rest = key.get(1..)?;
    let zero = rest.iter().position(|b| *b == 0)?;
    Some((
        String::from_utf8_lossy(&rest[..zero]).into_owned(),
        String::from_utf8_lossy(&rest[zero + 1..]).into_owned(),
    ))
}
