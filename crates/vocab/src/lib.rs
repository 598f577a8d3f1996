//! The shared vocabulary, defined once and used by the service kit, the rules crate and every
//! service: tenant ids ([`check_tenant_id`]), [`Jurisdiction`], [`LegalBasis`], and the time
//! conversions between protobuf timestamps, microseconds and tenant-local dates ([`time`]), and
//! the four services' names, URL settings and default ports ([`SERVICES`]).
//!
//! No I/O, no clock except [`time::now_micros`], and no dependency on the wire contract, so the
//! rules crate can use it without pulling in gRPC.

#![forbid(unsafe_code)]

pub mod time;

use std::fmt;

/// The four services: (name, the URL setting's key after `PRIVACY_`, the local default port) —
/// DESIGN §7. The services read it for their peers, the `privacy` CLI for where to call.
pub const SERVICES: [(&str, &str, u16); 4] = [
    ("consent", "CONSENT_URL", 50051),
    ("subject-requests", "SUBJECT_REQUESTS_URL", 50052),
    ("retention", "RETENTION_URL", 50053),
    ("disclosure-log", "DISCLOSURE_LOG_URL", 50054),
];
use std::str::FromStr;

/// A jurisdiction with a rule pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Jurisdiction {
    Vn,
    Ru,
    Au,
    Eu,
    UsCa,
}

impl Jurisdiction {
    pub const ALL: [Jurisdiction; 5] = [
        Jurisdiction::Vn,
        Jurisdiction::Ru,
        Jurisdiction::Au,
        Jurisdiction::Eu,
        Jurisdiction::UsCa,
    ];

    /// The code a tenant file names (`VN`, `RU`, `AU`, `EU`, `US-CA`).
    pub const fn code(self) -> &'static str {
        match self {
            Jurisdiction::Vn => "VN",
            Jurisdiction::Ru => "RU",
            Jurisdiction::Au => "AU",
            Jurisdiction::Eu => "EU",
            Jurisdiction::UsCa => "US-CA",
        }
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A jurisdiction code that is not one of [`Jurisdiction::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown jurisdiction {0:?} (known: VN, RU, AU, EU, US-CA)")]
pub struct UnknownJurisdiction(pub String);

impl FromStr for Jurisdiction {
    type Err = UnknownJurisdiction;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jurisdiction::ALL
            .into_iter()
            .find(|j| j.code().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownJurisdiction(s.to_owned()))
    }
}

/// Why processing of a purpose is lawful, as a tenant file declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LegalBasis {
    Consent,
    Contract,
    LegalObligation,
    LegitimateInterest,
    VitalInterest,
    PublicTask,
}

impl LegalBasis {
    pub const ALL: [LegalBasis; 6] = [
        LegalBasis::Consent,
        LegalBasis::Contract,
        LegalBasis::LegalObligation,
        LegalBasis::LegitimateInterest,
        LegalBasis::VitalInterest,
        LegalBasis::PublicTask,
    ];

    /// The name used in tenant files and in `CheckConsent`'s `basis`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LegalBasis::Consent => "consent",
            LegalBasis::Contract => "contract",
            LegalBasis::LegalObligation => "legal_obligation",
            LegalBasis::LegitimateInterest => "legitimate_interest",
            LegalBasis::VitalInterest => "vital_interest",
            LegalBasis::PublicTask => "public_task",
        }
    }

    /// Parses a tenant file's `legal_basis`.
    pub fn parse(s: &str) -> Option<LegalBasis> {
        LegalBasis::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Every name, for error messages.
    pub fn names() -> String {
        LegalBasis::ALL.map(LegalBasis::as_str).join(", ")
    }
}

impl fmt::Display for LegalBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tenant id that breaks the rule of [`check_tenant_id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant id {id:?} {reason}")]
pub struct InvalidTenantId {
    pub id: String,
    pub reason: &'static str,
}

/// Longest tenant id.
pub const MAX_TENANT_ID_LEN: usize = 64;

/// A tenant id is 1 to 64 letters, digits, `-`, `_` or `.`: safe in file names, sled keys and
/// log lines. (The NATS-token rule of the tenant issue narrows this.)
pub fn check_tenant_id(id: &str) -> Result<(), InvalidTenantId> {
    let fail = |reason| {
        Err(InvalidTenantId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return fail("is empty");
    }
    if id.len() > MAX_TENANT_ID_LEN {
        return fail("is longer than 64 bytes");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return fail("may hold only letters, digits and - _ .");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for j in Jurisdiction::ALL {
            assert_eq!(j.code().parse::<Jurisdiction>(), Ok(j));
        }
        assert_eq!("us-ca".parse::<Jurisdiction>(), Ok(Jurisdiction::UsCa));
        assert!("XX".parse::<Jurisdiction>().is_err());
        for b in LegalBasis::ALL {
            assert_eq!(LegalBasis::parse(b.as_str()), Some(b));
        }
        assert_eq!(LegalBasis::parse("vibes"), None);
        assert!(check_tenant_id("vn-apihub").is_ok());
        assert!(check_tenant_id("").is_err());
        assert!(check_tenant_id("a b").is_err());
        assert!(check_tenant_id(&"a".repeat(65)).is_err());
    }
}
