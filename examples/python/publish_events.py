#!/usr/bin/env python3
"""A backend written in Python: publishes every Privacy Ledger user event type as proto3 JSON
with nats-py and JetStream's publish acknowledgement — no Rust, no generated code.

Each event goes to `privacy.in.<tenant>.<event_type>` with the headers the contract asks for:
`Content-Type: application/json` and `Nats-Msg-Id: <tenant>:<event_id>` (so a retry with the
same event id is dropped by JetStream and, past its window, by the service). A publish counts
only once JetStream acknowledged it; then the event is stored by the service that takes it or
dead-lettered with a reason (`privacy.dlq.<service>.<tenant>`).

    .venv/bin/python examples/python/publish_events.py --tenant vn-apihub --subject u-42

`order.confirmed` answers an order a service sent (`privacy.v1.Order`, protobuf, on
`privacy.out.<tenant>.<system>.<action>`): pass its id and system with --order-id and
--order-system to send that answer too. Prints one JSON line per acknowledged event.
"""

import argparse
import asyncio
import datetime
import json
import sys
import uuid

import nats


def now() -> str:
    """RFC 3339 in UTC, as the proto3 JSON mapping writes a Timestamp."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def events(subject: str, order_id: str | None, order_system: str | None):
    """(event_type, payload field, payload) for every user event type, in a backend's order."""
    personal_email = {"email": {"clear": f"{subject}@example.com"}}
    yield "subject.registered", "subjectRegistered", {
        "birthDate": "1990-04-01",
        "personal": personal_email,
    }
    yield "subject.updated", "subjectUpdated", {"personal": {"phone": {"clear": "+84 28 3822 0000"}}}
    yield "consent.granted", "consentGranted", {
        "purposes": ["marketing"],
        "policyVersion": "v1",
        "method": "CONSENT_METHOD_UNTICKED_CHECKBOX",
        "expressedBy": "EXPRESSED_BY_SUBJECT",
        "evidence": {"ip": {"clear": "203.0.113.7"}},
    }
    yield "consent.refused", "consentRefused", {
        "purposes": ["analytics"],
        "policyVersion": "v1",
        "method": "CONSENT_METHOD_UNTICKED_CHECKBOX",
        "expressedBy": "EXPRESSED_BY_SUBJECT",
    }
    yield "consent.signal", "consentSignal", {"signal": "gpc", "value": True}
    yield "consent.withdrawn", "consentWithdrawn", {"purposes": ["marketing"], "method": "settings page"}
    yield "data.collected", "dataCollected", {
        "category": "contact",
        "system": "accounts",
        "purpose": "provide_service",
    }
    yield "data.disclosed", "dataDisclosed", {
        "recipient": "Acme Logistics",
        "recipientRole": "RECIPIENT_ROLE_PROCESSOR",
        "country": "VN",
        "categories": ["contact"],
        "legalBasis": "LEGAL_BASIS_CONTRACT",
        "system": "accounts",
    }
    yield "data.erased", "dataErased", {"category": "contact", "system": "accounts"}
    yield "request.received", "requestReceived", {
        "requestType": "REQUEST_TYPE_ACCESS",
        "channel": "email",
    }
    if order_id:
        yield "order.confirmed", "orderConfirmed", {
            "orderId": order_id,
            "system": order_system,
            "outcome": "ORDER_OUTCOME_DONE",
        }
    yield "subject.deactivated", "subjectDeactivated", {"reason": "account_closed"}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS URL")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--subject", required=True, help="the subject's pseudonymous id")
    parser.add_argument("--source", default="python-example", help="the publishing system")
    parser.add_argument("--order-id", help="answer this order with order.confirmed")
    parser.add_argument("--order-system", help="the system the order went to")
    args = parser.parse_args()
    if bool(args.order_id) != bool(args.order_system):
        parser.error("--order-id and --order-system go together")

    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    try:
        for event_type, field, payload in events(args.subject, args.order_id, args.order_system):
            event_id = str(uuid.uuid4())
            envelope = {
                "eventId": event_id,
                "eventType": event_type,
                "schemaVersion": 1,
                "tenant": args.tenant,
                "subjectId": args.subject,
                "occurredAt": now(),
                "source": args.source,
                field: payload,
            }
            ack = await js.publish(
                f"privacy.in.{args.tenant}.{event_type}",
                json.dumps(envelope).encode(),
                headers={
                    "Content-Type": "application/json",
                    "Nats-Msg-Id": f"{args.tenant}:{event_id}",
                },
                timeout=10,
            )
            print(json.dumps({
                "event_type": event_type,
                "event_id": event_id,
                "stream": ack.stream,
                "stream_seq": ack.seq,
                "duplicate": bool(ack.duplicate),
            }), flush=True)
    finally:
        await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
