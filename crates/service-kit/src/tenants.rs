//! The tenant registry: one TOML file per tenant (data controller) in `PRIVACY_TENANTS_DIR`,
//! loaded and checked at start-up. An event for a tenant not in the registry is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::tz::TimeZone;
use privacy_vocab::{Jurisdiction, LegalBasis, check_tenant_id, time};
use serde::Deserialize;

/// A purpose of processing in a tenant's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purpose {
    pub id: String,
    /// consent, contract, legal_obligation, legitimate_interest, vital_interest, public_task.
    pub legal_basis: String,
    #[serde(default)]
    pub description: String,
    /// A Global Privacy Control signal opts the subject out of this purpose (sale, sharing,
    /// targeted advertising), where the tenant's law honours the signal.
    #[serde(default)]
    pub gpc_opt_out: bool,
}

/// What kind of controller a tenant is, where the law treats them differently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    #[default]
    Organisation,
    Agency,
}

/// One data controller, as configured.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub display_name: String,
    pub jurisdiction: String,
    /// IANA time zone, e.g. `Asia/Ho_Chi_Minh`.
    pub time_zone: String,
    /// EU member state or Australian state, where deadlines depend on it.
    #[serde(default)]
    pub region: Option<String>,
    /// `organisation` (the default) or `agency` (a public body: AU agencies have a statutory
    /// last day that rolls past weekends and holidays).
    #[serde(default)]
    pub entity: Entity,
    #[serde(default)]
    pub purposes: Vec<Purpose>,
    /// Backend systems that hold the tenant's data.
    #[serde(default)]
    pub systems: Vec<String>,
    /// Everything else (promises, retention schedules…), read by the domain services.
    #[serde(flatten)]
    pub extra: toml::Table,
}

impl Tenant {
    pub fn purpose(&self, id: &str) -> Option<&Purpose> {
        self.purposes.iter().find(|p| p.id == id)
    }

    /// The legal basis the tenant declares for a purpose (`None`: not in its catalog).
    pub fn basis_of(&self, purpose: &str) -> Option<LegalBasis> {
        self.purpose(purpose)
            .and_then(|p| LegalBasis::parse(&p.legal_basis))
    }

    /// The tenant's time zone (checked when the registry loaded).
    pub fn zone(&self) -> TimeZone {
        TimeZone::get(&self.time_zone).unwrap_or(TimeZone::UTC)
    }

    /// The tenant-local date of an instant (microseconds since the epoch).
    pub fn local_date(&self, micros: i64) -> Option<jiff::civil::Date> {
        time::local_date(micros, &self.zone())
    }

    /// The instant a tenant-local date begins.
    pub fn start_of(&self, date: jiff::civil::Date) -> Option<i64> {
        time::start_of(date, &self.zone())
    }
}

/// A tenant file is missing, unreadable or wrong.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenants folder {path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error("tenant file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Every configured tenant, by id.
#[derive(Debug, Clone, Default)]
pub struct TenantRegistry {
    tenants: BTreeMap<String, Tenant>,
}

impl TenantRegistry {
    /// Loads every `*.toml` in `dir`.
    pub fn load(dir: &Path) -> Result<TenantRegistry, TenantError> {
        let folder_err = |reason: String| TenantError::Folder {
            path: dir.to_path_buf(),
            reason,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| folder_err(e.to_string()))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        let mut registry = TenantRegistry::default();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| TenantError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let tenant = parse(&text).map_err(|reason| TenantError::File {
                path: path.clone(),
                reason,
            })?;
            if !privacy_proto::validate::is_tenant_id(&tenant.id) {
                return Err(TenantError::File {
                    path,
                    reason: format!(
                        "tenant id {:?} is not a NATS-safe token: use 1-63 of a-z, 0-9 and -",
                        tenant.id
                    ),
                });
            }
            if registry.tenants.contains_key(&tenant.id) {
                return Err(TenantError::File {
                    path,
                    reason: format!("tenant id {:?} is defined twice", tenant.id),
                });
            }
            registry.tenants.insert(tenant.id.clone(), tenant);
        }
        Ok(registry)
    }

    pub fn get(&self, id: &str) -> Option<&Tenant> {
        self.tenants.get(id)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.tenants.keys().map(String::as_str)
    }

    /// A registry of the given tenants (tests, tools).
    pub fn from_tenants(tenants: impl IntoIterator<Item = Tenant>) -> TenantRegistry {
        TenantRegistry {
            tenants: tenants.into_iter().map(|t| (t.id.clone(), t)).collect(),
        }
    }
}

/// Parses and checks one tenant file.
pub fn parse(text: &str) -> Result<Tenant, String> {
    let tenant: Tenant = toml::from_str(text).map_err(|e| e.to_string())?;
    check_tenant_id(&tenant.id).map_err(|e| format!("id: {e}"))?;
    if !Jurisdiction::ALL
        .iter()
        .any(|j| j.code() == tenant.jurisdiction)
    {
        return Err(format!(
            "jurisdiction {:?} is not one of {}",
            tenant.jurisdiction,
            Jurisdiction::ALL.map(Jurisdiction::code).join(", ")
        ));
    }
    jiff::tz::TimeZone::get(&tenant.time_zone)
        .map_err(|_| format!("time_zone {:?} is not an IANA time zone", tenant.time_zone))?;
    let mut systems = std::collections::BTreeSet::new();
    for system in &tenant.systems {
        // A system is a token of the `privacy.out.<tenant>.<system>.<action>` subject.
        if !privacy_proto::validate::is_tenant_id(system) {
            return Err(format!(
                "system {system:?} is not a NATS-safe token: use 1-63 of a-z, 0-9 and -"
            ));
        }
        if !systems.insert(system.as_str()) {
            return Err(format!("system {system:?} is listed twice"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &tenant.purposes {
        if !seen.insert(p.id.as_str()) {
            return Err(format!("purpose {:?} is listed twice", p.id));
        }
        if LegalBasis::parse(&p.legal_basis).is_none() {
            return Err(format!(
                "purpose {:?}: legal_basis {:?} is not one of {}",
                p.id,
                p.legal_basis,
                LegalBasis::names()
            ));
        }
    }
    Ok(tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_file_parses_and_mistakes_are_named() {
        let ok = r#"
id = "acme"
display_name = "Acme"
jurisdiction = "EU"
time_zone = "Europe/Berlin"
region = "DE"
systems = ["crm"]
[[purposes]]
id = "marketing"
legal_basis = "consent"
[promises]
access_days = 30
"#;
        let t = parse(ok).unwrap();
        assert_eq!(t.purpose("marketing").unwrap().legal_basis, "consent");
        assert!(t.extra.contains_key("promises"));
        assert!(
            parse(&ok.replace("[\"crm\"]", "[\"crm.eu\"]"))
                .unwrap_err()
                .contains("crm.eu")
        );
        assert!(
            parse(&ok.replace("\"EU\"", "\"XX\""))
                .unwrap_err()
                .contains("jurisdiction")
        );
        assert!(
            parse(&ok.replace("Europe/Berlin", "Mars/Base"))
                .unwrap_err()
                .contains("time_zone")
        );
        assert!(
            parse(&ok.replace("\"consent\"", "\"vibes\""))
                .unwrap_err()
                .contains("legal_basis")
        );
        assert_eq!(t.entity, Entity::Organisation);
        let agency = ok.replace("region = \"DE\"", "region = \"DE\"\nentity = \"agency\"");
        assert_eq!(parse(&agency).unwrap().entity, Entity::Agency);
        let typo = ok.replace("region = \"DE\"", "region = \"DE\"\nentity = \"agncy\"");
        assert!(parse(&typo).unwrap_err().contains("entity"));
    }

    #[test]
    fn the_shipped_example_tenants_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tenants");
        let registry = TenantRegistry::load(&dir).unwrap();
        assert!(
            registry.len() == 4,
            "expected the four example tenants in {}",
            dir.display()
        );
    }

    /// The example tenants stand for the policies in `shared/seeds/` (SEEDS.md lists each
    /// promise): each purpose with its basis, the promised answer times, the children's age, the
    /// representatives and transfers the policies speak of.
    #[test]
    fn the_example_tenants_keep_their_policies_promises() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tenants");
        let registry = TenantRegistry::load(&dir).unwrap();
        let get = |id: &str| registry.get(id).unwrap();
        let basis = |t: &Tenant, p: &str| {
            t.purpose(p)
                .map(|p| p.legal_basis.clone())
                .unwrap_or_else(|| panic!("{} has no purpose {p}", t.id))
        };
        let value = |t: &Tenant, table: &str, key: &str| {
            t.extra
                .get(table)
                .and_then(|v| v.get(key))
                .cloned()
                .unwrap_or_else(|| panic!("{}: [{table}] {key} missing", t.id))
        };
        // Apix (VN): nine purposes, fraud investigation on legitimate interest; access and
        // complaints within 30 days; not for children under 13.
        let vn = get("vn-apihub");
        for p in ["provide_service", "identification"] {
            assert_eq!(basis(vn, p), "contract");
        }
        for p in [
            "communication",
            "marketing",
            "analytics",
            "push_notifications",
            "third_party_linking",
            "personalisation",
        ] {
            assert_eq!(basis(vn, p), "consent");
        }
        assert_eq!(basis(vn, "fraud_prevention"), "legitimate_interest");
        assert_eq!(value(vn, "promises", "access_days").as_integer(), Some(30));
        assert_eq!(
            value(vn, "promises", "complaint_days").as_integer(),
            Some(30)
        );
        assert_eq!(value(vn, "children", "min_age").as_integer(), Some(13));
        // ApiWay (RU): the five purposes of 5.2; representatives pass on third parties'
        // consent (8.2); no cross-border transfer (4.4); complaints within 30 business days.
        let ru = get("ru-crm");
        for p in ["provide_service", "identification"] {
            assert_eq!(basis(ru, p), "contract");
        }
        for p in ["interaction", "advertising", "statistics"] {
            assert_eq!(basis(ru, p), "consent");
        }
        assert_eq!(
            value(ru, "consent", "representatives_allowed").as_bool(),
            Some(true)
        );
        assert!(
            value(ru, "disclosures", "no_cross_border")
                .as_str()
                .is_some_and(|s| s.contains("4.4"))
        );
        assert_eq!(
            value(ru, "promises", "complaint_business_days").as_integer(),
            Some(30)
        );
        // APIShift (AU): the contract or consent; clients' customers' consent by representative.
        let au = get("au-messenger");
        assert_eq!(basis(au, "provide_service"), "contract");
        assert_eq!(
            value(au, "consent", "representatives_allowed").as_bool(),
            Some(true)
        );
        assert_eq!(value(au, "promises", "access_days").as_integer(), Some(30));
    }
}
