//! Personal data inside envelopes: sealed with the subject's key on the way in, opened (or shown
//! as erased) on the way out. Which maps carry personal data is said once, in the event
//! catalogue; the field's path (`personal.email`) is bound into the ciphertext so a value cannot
//! be moved.

use std::collections::BTreeMap;

use privacy_event_store::{Opened, SealedField, StoreError, Vault};
use privacy_proto::catalogue::{move_free_text, personal_maps, restore_free_text};
use privacy_proto::v1::envelope::Payload;
use privacy_proto::v1::{Envelope, Erased, PersonalValue, Sealed, personal_value::Value};

/// Seals every clear value of one personal-data map under the subject's key; the field's path
/// (`<map>.<name>`) is bound into the ciphertext.
pub fn seal_map(
    vault: &Vault,
    tenant: &str,
    subject: &str,
    map_name: &str,
    map: &mut BTreeMap<String, PersonalValue>,
) -> Result<(), StoreError> {
    for (name, value) in map.iter_mut() {
        if let Some(Value::Clear(text)) = &value.value {
            let path = format!("{map_name}.{name}");
            let s = vault.seal(tenant, subject, &path, text.as_bytes())?;
            value.value = Some(Value::Sealed(Sealed {
                key_generation: s.key_generation,
                nonce: s.nonce,
                ciphertext: s.ciphertext,
            }));
        }
    }
    Ok(())
}

/// Seals every clear personal value of a user event's payload (the maps the event catalogue
/// names, after its free-text fields moved into them) under its subject's key.
pub fn seal_envelope(vault: &Vault, env: &mut Envelope) -> Result<(), StoreError> {
    let (tenant, subject) = (env.tenant.clone(), env.subject_id.clone());
    if let Some(payload) = env.payload.as_mut() {
        move_free_text(payload);
        for (map_name, map) in personal_maps(payload) {
            seal_map(vault, &tenant, &subject, map_name, map)?;
        }
    }
    Ok(())
}

/// Opens the sealed values of a stored payload of `tenant`'s `subject` for display (as
/// [`open_envelope`] does for a whole envelope).
pub fn open_payload(
    vault: &Vault,
    tenant: &str,
    subject: &str,
    payload: Payload,
) -> Result<Payload, StoreError> {
    let mut env = Envelope {
        tenant: tenant.to_owned(),
        subject_id: subject.to_owned(),
        payload: Some(payload),
        ..Default::default()
    };
    open_envelope(vault, &mut env)?;
    env.payload.ok_or_else(|| StoreError::Corrupt {
        seq: 0,
        reason: "an opened payload went missing".into(),
    })
}

/// Opens every sealed value of `env` for display: clear text (free text back in its own field),
/// or `erased` once the subject's key was shredded.
pub fn open_envelope(vault: &Vault, env: &mut Envelope) -> Result<(), StoreError> {
    let (tenant, subject) = (env.tenant.clone(), env.subject_id.clone());
    let Some(payload) = env.payload.as_mut() else {
        return Ok(());
    };
    for (map_name, map) in personal_maps(payload) {
        for (name, value) in map.iter_mut() {
            if let Some(Value::Sealed(s)) = &value.value {
                let path = format!("{map_name}.{name}");
                let field = SealedField {
                    key_generation: s.key_generation,
                    nonce: s.nonce.clone(),
                    ciphertext: s.ciphertext.clone(),
                };
                value.value = Some(match vault.open_field(&tenant, &subject, &path, &field)? {
                    Opened::Clear(bytes) => {
                        Value::Clear(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    Opened::Erased { shredded_at_micros } => Value::Erased(Erased {
                        shredded_at: Some(privacy_vocab::time::timestamp(shredded_at_micros)),
                    }),
                });
            }
        }
    }
    restore_free_text(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use privacy_proto::v1::SubjectRegistered;
    use privacy_proto::v1::envelope::Payload;

    #[test]
    fn sealed_values_open_until_the_subject_is_shredded() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path(), &privacy_event_store::MasterKey::generate()).unwrap();
        let mut env = Envelope {
            tenant: "acme".into(),
            subject_id: "u-1".into(),
            payload: Some(Payload::SubjectRegistered(SubjectRegistered {
                personal: [(
                    "email".to_string(),
                    PersonalValue {
                        value: Some(Value::Clear("ann@example.com".into())),
                    },
                )]
                .into(),
                birth_date: "2011-07-23".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let published = env.clone();
        seal_envelope(&vault, &mut env).unwrap();
        let stored = env.clone();
        let text = format!("{stored:?}");
        assert!(!text.contains("ann@example.com"));
        assert!(
            !text.contains("2011-07-23"),
            "the birth date rests sealed: {text}"
        );
        open_envelope(&vault, &mut env).unwrap();
        assert_eq!(env, published, "opening gives back the event as published");
        vault.shred("acme", "u-1", 5).unwrap();
        let mut env = stored;
        open_envelope(&vault, &mut env).unwrap();
        let Some(Payload::SubjectRegistered(p)) = &env.payload else {
            unreachable!()
        };
        assert!(matches!(p.personal["email"].value, Some(Value::Erased(_))));
        assert!(matches!(
            p.personal["birth_date"].value,
            Some(Value::Erased(_))
        ));
        assert!(p.birth_date.is_empty());
    }
}
