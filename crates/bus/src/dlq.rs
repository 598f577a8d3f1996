//! The dead-letter queue: a refused message is republished on `<prefix>.dlq.<service>` with its
//! original bytes untouched and the reason in headers, before the original is acked.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::PublishMessage};
use privacy_proto::Rejection;

use crate::BusError;

/// Human-readable reason.
pub const HEADER_ERROR: &str = "Privacy-Error";
/// Dotted path of the offending field (`message` for the whole message).
pub const HEADER_ERROR_FIELD: &str = "Privacy-Error-Field";
/// Machine-readable reason code (`malformed`, `missing_field`, …).
pub const HEADER_ERROR_CODE: &str = "Privacy-Error-Code";
/// The subject the message was published on.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Privacy-Original-Subject";

/// Publishes `original` to the DLQ and waits for JetStream's ack. `dedupe_id` makes a redelivered
/// original land once.
pub(crate) async fn publish(
    js: &jetstream::Context,
    dlq_subject: &str,
    original: &async_nats::Message,
    rejection: &Rejection,
    dedupe_id: &str,
) -> Result<(), BusError> {
    let mut headers = HeaderMap::new();
    if let Some(orig) = &original.headers {
        for (name, values) in orig.iter() {
            let n: &str = name.as_ref();
            if n.eq_ignore_ascii_case("Nats-Msg-Id") {
                continue;
            }
            for v in values {
                headers.append(n, v.as_str());
            }
        }
    }
    // Header values are single lines.
    let reason = rejection.reason.replace(['\r', '\n'], " ");
    headers.insert(HEADER_ERROR, reason.as_str());
    headers.insert(HEADER_ERROR_FIELD, rejection.field.as_str());
    headers.insert(HEADER_ERROR_CODE, rejection.code.as_str());
    headers.insert(HEADER_ORIGINAL_SUBJECT, original.subject.as_str());
    let msg = PublishMessage::build()
        .payload(original.payload.clone())
        .headers(headers)
        .message_id(dedupe_id);
    let err = |reason: String| BusError::Publish {
        subject: dlq_subject.to_owned(),
        reason,
    };
    js.send_publish(dlq_subject.to_owned(), msg)
        .await
        .map_err(|e| err(e.to_string()))?
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}
