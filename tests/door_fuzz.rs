//! The door under fuzzing: arbitrary bytes, arbitrary JSON, and valid envelopes mutated field
//! by field and byte by byte (as protobuf and as JSON) go through decode → validate → the
//! domain's check → seal, exactly as NATS ingest runs them. The property: nothing panics, and
//! every refusal names a field and says why. Shared by the e2e test (a few thousand cases) and
//! the `fuzz_door` bench (100k and more).

use std::time::SystemTime;

use privacy_proto::decode::envelope_to_json;
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::*;
use privacy_proto::validate::check_size;
use privacy_proto::{Encoding, Limits, RejectionCode, decode_envelope};
use privacy_service_kit::{Admitted, DoorError, ServiceContext};
use proptest::prelude::*;
use prost::Message;

use crate::{TENANT, envelope, granted};

/// What the door made of one input.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub admitted: u64,
    pub duplicates: u64,
    pub refused: u64,
}

/// One fuzz input: the bytes and how they are labelled.
#[derive(Debug, Clone)]
pub struct Input {
    pub bytes: Vec<u8>,
    pub json: bool,
}

/// Runs one input through the door; `Err` names the broken property.
pub async fn run_case(
    ctx: &ServiceContext,
    input: &Input,
    tally: &mut Tally,
) -> Result<(), String> {
    let limits = Limits::default();
    let refused = |code: RejectionCode, field: &str, reason: &str| {
        if field.is_empty() || reason.is_empty() {
            return Err(format!(
                "a {code} refusal without a field or reason: {field:?} {reason:?}"
            ));
        }
        Ok(())
    };
    if let Err(r) = check_size(input.bytes.len(), &limits) {
        tally.refused += 1;
        return refused(r.code, &r.field, &r.reason);
    }
    let encoding = if input.json {
        Encoding::Json
    } else {
        Encoding::Protobuf
    };
    let envelope = match decode_envelope(&input.bytes, encoding) {
        Ok(e) => e,
        Err(e) => {
            tally.refused += 1;
            return refused(RejectionCode::Malformed, "message", &e.to_string());
        }
    };
    let subject_type = Some(envelope.event_type.clone());
    match ctx
        .admit(envelope, subject_type.as_deref(), SystemTime::now(), None)
        .await
    {
        Ok(Admitted::New(events)) => {
            if events.is_empty() {
                return Err("admitted with nothing to store".into());
            }
            tally.admitted += 1;
            Ok(())
        }
        Ok(Admitted::Duplicate(_)) => {
            tally.duplicates += 1;
            Ok(())
        }
        Err(DoorError::Rejected(r)) => {
            tally.refused += 1;
            if r.field == "message" && r.code != RejectionCode::TooLarge {
                return Err(format!("a decoded event refused without a field: {r}"));
            }
            refused(r.code, &r.field, &r.reason)
        }
        Err(e) => Err(format!("not a refusal but {e}")),
    }
}

/// Valid envelopes of the test tenant, one per kind the fuzzer starts from.
pub fn seeds() -> Vec<Envelope> {
    let clear = |v: &str| PersonalValue {
        value: Some(personal_value::Value::Clear(v.into())),
    };
    vec![
        envelope("u-1", granted("marketing")),
        envelope(
            "u-2",
            Payload::ConsentWithdrawn(ConsentWithdrawn {
                purposes: vec!["marketing".into()],
                method: "settings".into(),
                ..Default::default()
            }),
        ),
        envelope(
            "u-3",
            Payload::SubjectRegistered(SubjectRegistered {
                birth_date: "2001-02-03".into(),
                age_band: "18-25".into(),
                personal: [("email".to_string(), clear("ann@example.com"))].into(),
            }),
        ),
        envelope(
            "u-4",
            Payload::ConsentSignal(ConsentSignal {
                signal: "gpc".into(),
                value: true,
            }),
        ),
        envelope(
            "u-5",
            Payload::DataDisclosed(DataDisclosed {
                recipient: "Acme Ads".into(),
                recipient_role: RecipientRole::Processor as i32,
                country: "DE".into(),
                categories: vec!["email".into()],
                legal_basis: LegalBasis::Consent as i32,
                system: "crm".into(),
                ..Default::default()
            }),
        ),
    ]
}

/// A field-level change to an envelope.
#[derive(Debug, Clone)]
pub enum Mutation {
    EventId(String),
    EventType(String),
    Tenant(String),
    Subject(String),
    OccurredAt(Option<(i64, i32)>),
    Schema(u32),
    Purposes(Vec<String>),
    ValidUntil(i64, i32),
    Enum(i32),
    Personal(Vec<(String, String)>),
    NoPayload,
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(TENANT.to_owned()),
        "[a-z0-9._-]{1,12}",
        ".{0,40}",
        (0usize..200).prop_map(|n| "x".repeat(n)),
    ]
}

fn instant() -> impl Strategy<Value = (i64, i32)> {
    prop_oneof![
        Just((i64::MAX, 0)),
        Just((i64::MIN, 0)),
        Just((0, -1)),
        Just((253_402_300_800, 0)),
        (0i64..4_000_000_000, 0i32..1_000_000_000),
        (any::<i64>(), any::<i32>()),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        text().prop_map(Mutation::EventId),
        prop_oneof![
            Just("consent.granted".to_owned()),
            Just("subject.registered".to_owned()),
            Just("data.disclosed".to_owned()),
            text()
        ]
        .prop_map(Mutation::EventType),
        text().prop_map(Mutation::Tenant),
        text().prop_map(Mutation::Subject),
        proptest::option::of(instant()).prop_map(Mutation::OccurredAt),
        (0u32..4).prop_map(Mutation::Schema),
        proptest::collection::vec(text(), 0..80).prop_map(Mutation::Purposes),
        instant().prop_map(|(s, n)| Mutation::ValidUntil(s, n)),
        (-2i32..12).prop_map(Mutation::Enum),
        proptest::collection::vec((text(), text()), 0..70).prop_map(Mutation::Personal),
        Just(Mutation::NoPayload),
    ]
}

fn apply(env: &mut Envelope, m: &Mutation) {
    let ts = |(seconds, nanos): (i64, i32)| prost_types::Timestamp { seconds, nanos };
    match m {
        Mutation::EventId(v) => env.event_id = v.clone(),
        Mutation::EventType(v) => env.event_type = v.clone(),
        Mutation::Tenant(v) => env.tenant = v.clone(),
        Mutation::Subject(v) => env.subject_id = v.clone(),
        Mutation::OccurredAt(v) => env.occurred_at = v.map(ts),
        Mutation::Schema(v) => env.schema_version = *v,
        Mutation::NoPayload => env.payload = None,
        Mutation::Purposes(v) => match &mut env.payload {
            Some(Payload::ConsentGranted(p)) => p.purposes = v.clone(),
            Some(Payload::ConsentWithdrawn(p)) => p.purposes = v.clone(),
            Some(Payload::DataDisclosed(p)) => p.categories = v.clone(),
            _ => {}
        },
        Mutation::ValidUntil(s, n) => {
            if let Some(Payload::ConsentGranted(p)) = &mut env.payload {
                p.valid_until = Some(ts((*s, *n)));
            }
        }
        Mutation::Enum(v) => match &mut env.payload {
            Some(Payload::ConsentGranted(p)) => {
                p.method = *v;
                p.expressed_by = v.rotate_left(1);
            }
            Some(Payload::DataDisclosed(p)) => {
                p.recipient_role = *v;
                p.legal_basis = v.rotate_left(1);
            }
            _ => {}
        },
        Mutation::Personal(pairs) => {
            let map = pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        PersonalValue {
                            value: Some(personal_value::Value::Clear(v.clone())),
                        },
                    )
                })
                .collect();
            match &mut env.payload {
                Some(Payload::ConsentGranted(p)) => p.evidence = map,
                Some(Payload::SubjectRegistered(p)) => p.personal = map,
                _ => {}
            }
        }
    }
}

/// Arbitrary JSON values, with envelope-like keys often enough to get past the first field.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("eventId".to_owned()),
        Just("eventType".to_owned()),
        Just("tenant".to_owned()),
        Just("subjectId".to_owned()),
        Just("occurredAt".to_owned()),
        Just("consentGranted".to_owned()),
        Just("purposes".to_owned()),
        Just("validUntil".to_owned()),
        Just("evidence".to_owned()),
        "[a-zA-Z_]{1,10}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        ".{0,30}".prop_map(serde_json::Value::String),
        Just(serde_json::json!("9999-12-31T23:59:60Z")),
        Just(serde_json::json!("2026-11-24T00:00:00Z")),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Every kind of input the door is fuzzed with.
pub fn inputs() -> impl Strategy<Value = Input> {
    let seeds = seeds();
    let n = seeds.len();
    let mutated = (
        0..n,
        proptest::collection::vec(mutation(), 0..4),
        any::<bool>(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        proptest::option::of(any::<usize>()),
    )
        .prop_map(move |(i, muts, json, flips, cut)| {
            let mut env = seeds[i].clone();
            env.event_id = uuid::Uuid::now_v7().to_string();
            for m in &muts {
                apply(&mut env, m);
            }
            // JSON cannot express every envelope (e.g. a timestamp past year 9999): those go
            // as protobuf.
            let (mut bytes, json) = match json.then(|| envelope_to_json(&env)) {
                Some(Ok(bytes)) => (bytes, true),
                _ => (env.encode_to_vec(), false),
            };
            if !bytes.is_empty() {
                for (at, xor) in flips {
                    let at = at % bytes.len();
                    bytes[at] ^= xor;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut % (bytes.len() + 1));
                }
            }
            Input { bytes, json }
        });
    prop_oneof![
        3 => mutated,
        1 => (proptest::collection::vec(any::<u8>(), 0..512), any::<bool>())
            .prop_map(|(bytes, json)| Input { bytes, json }),
        1 => json_value().prop_map(|v| Input {
            bytes: serde_json::to_vec(&v).expect("JSON encodes"),
            json: true,
        }),
    ]
}

/// What one fuzz run found.
pub struct Run {
    /// The first broken property, with proptest's minimal input.
    pub failure: Option<String>,
    pub tally: Tally,
    pub elapsed: std::time::Duration,
}

/// Starts the consent service in-process against a fresh NATS server, publishes the test
/// tenant's policy, and runs `cases` inputs through its door.
pub fn run(cases: u32) -> Run {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let nats = privacy_testkit::NatsServer::start();
    let data = tempfile::tempdir().expect("a temporary directory");
    let svc = rt.block_on(crate::InProcess::start(
        privacy_consent::SPEC,
        &nats.url(),
        data.path(),
    ));
    rt.block_on(crate::publish_policy_v1(&svc.url()));
    let ctx = svc.service.context.clone();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let tally = std::sync::Mutex::new(Tally::default());
    let start = std::time::Instant::now();
    let result = runner.run(&inputs(), |input| {
        let mut t = tally.lock().expect("not poisoned");
        rt.block_on(run_case(&ctx, &input, &mut t))
            .map_err(TestCaseError::fail)
    });
    let elapsed = start.elapsed();
    rt.block_on(svc.stop());
    Run {
        failure: result.err().map(|e| e.to_string()),
        tally: *tally.lock().expect("not poisoned"),
        elapsed,
    }
}
