//! Bearer tokens (DESIGN §4.4): each configured token maps to a role (`backend`, `operator`,
//! `auditor`) **and** the tenants it may act for (`*` for all). Only BLAKE3 digests of tokens
//! are kept in memory and nothing about a token is logged. An interceptor authenticates
//! (UNAUTHENTICATED without a known token); each RPC then calls [`require`], which checks the
//! role and, from the request's [`Scoped`] tenant, that the token may act for that tenant
//! (PERMISSION_DENIED otherwise) before anything else looks at the request.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use privacy_proto::v1::*;
use tonic::{Request, Status};

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Publishes user events, checks consent.
    Backend,
    /// Manages requests, policies, schedules, holds; may rebuild projections.
    Operator,
    /// Reads and verifies; never mutates.
    Auditor,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Backend => "backend",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "backend" => Ok(Role::Backend),
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            // A role is not secret; an unknown one may be a mangled token, so it is not shown.
            _ => Err("unknown role (roles: backend, operator, auditor)".into()),
        }
    }
}

/// The tenants a token may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// `*`: every tenant, including tenants added later.
    All,
    /// Only these tenants.
    Only(BTreeSet<String>),
}

impl FromStr for TenantScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "*" {
            return Ok(TenantScope::All);
        }
        let mut set = BTreeSet::new();
        for t in s.split('+') {
            let t = t.trim();
            if !privacy_proto::validate::is_tenant_id(t) {
                return Err("tenants must be `*` or tenant ids ([a-z0-9-]) joined by `+`".into());
            }
            set.insert(t.to_owned());
        }
        Ok(TenantScope::Only(set))
    }
}

/// Who is calling: the role and tenants of the presented token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    tenants: Arc<TenantScope>,
}

impl Caller {
    /// A caller for every tenant (in-process tools and tests).
    pub fn all_tenants(role: Role) -> Caller {
        Caller {
            role,
            tenants: Arc::new(TenantScope::All),
        }
    }

    /// Whether the caller may act for `tenant`.
    pub fn may_act_for(&self, tenant: &str) -> bool {
        match &*self.tenants {
            TenantScope::All => true,
            TenantScope::Only(set) => set.contains(tenant),
        }
    }

    /// Whether the token is for every tenant (`*`).
    pub fn is_for_all_tenants(&self) -> bool {
        matches!(*self.tenants, TenantScope::All)
    }

    /// PERMISSION_DENIED unless the caller may act for `tenant`.
    pub fn check_tenant(&self, tenant: &str) -> Result<(), Status> {
        if self.may_act_for(tenant) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "tenant: this {} token may not act for tenant {tenant:?}",
                self.role
            )))
        }
    }
}

/// Which tenant a request is about, so [`require`] checks it before the handler runs.
pub enum Scope<'a> {
    /// The request acts on this tenant (empty: the handler refuses it as missing).
    Tenant(&'a str),
    /// An optional tenant filter: when set it must be the caller's; when empty the handler
    /// shows only the caller's tenants.
    Filter(&'a str),
    /// Aggregate facts about the whole store that carry no tenant's data (chain hashes,
    /// projection checkpoints): any token of an allowed role.
    Store,
    /// Acts on every tenant's data at once (rebuilding views): only tokens for all tenants.
    AllTenants,
}

/// A request message whose tenant scope is known; every RPC's request implements it, so a new
/// RPC cannot reach [`require`] without stating its scope.
pub trait Scoped {
    fn scope(&self) -> Scope<'_>;
}

macro_rules! scoped {
    ($variant:ident: $($t:ty),* $(,)?) => {
        $(impl Scoped for $t {
            fn scope(&self) -> Scope<'_> {
                Scope::$variant(&self.tenant)
            }
        })*
    };
}

scoped!(Tenant:
    PublishPolicyRequest,
    GrantConsentRequest,
    RefuseConsentRequest,
    WithdrawConsentRequest,
    CheckConsentRequest,
    GetConsentHistoryRequest,
    ExportConsentReceiptRequest,
    GetSubjectTimelineRequest,
    OpenRequestRequest,
    VerifyIdentityRequest,
    StartRequestRequest,
    ExtendDeadlineRequest,
    PauseRequestRequest,
    ResumeRequestRequest,
    CompleteRequestRequest,
    RejectRequestRequest,
    WithdrawRequestRequest,
    GetRequestRequest,
    ListRequestsRequest,
    GetAccessReportRequest,
    GetSubjectHoldingsRequest,
    ListDueRequest,
    PlaceLegalHoldRequest,
    ReleaseLegalHoldRequest,
    ListLegalHoldsRequest,
    PlanErasureRequest,
    GetErasureRequest,
    RecordTriggerRequest,
    PutScheduleRequest,
    ListSchedulesRequest,
    GetCohortCountsRequest,
    RecordDisclosureRequest,
    GetDisclosureRequest,
    ListDisclosuresRequest,
    AccountingOfDisclosuresRequest,
    RecipientsToNotifyRequest,
);
scoped!(Filter: StreamEventsRequest);

impl Scoped for VerifyChainRequest {
    fn scope(&self) -> Scope<'_> {
        Scope::Store
    }
}

impl Scoped for ProjectionStatusRequest {
    fn scope(&self) -> Scope<'_> {
        Scope::Store
    }
}

impl Scoped for RebuildProjectionsRequest {
    fn scope(&self) -> Scope<'_> {
        Scope::AllTenants
    }
}

/// Token digests and their callers. Debug output never shows them.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Caller>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} configured)", self.by_digest.len())
    }
}

const TOKEN_FORMAT: &str =
    "expected `role:tenants:token` (tenants: `*` for all, or ids joined by `+`)";

impl Tokens {
    pub fn add(&mut self, role: Role, tenants: TenantScope, token: &str) -> Result<(), String> {
        if token.len() < 8 {
            return Err(format!("a {role} token is shorter than 8 characters"));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(format!("a {role} token contains white space"));
        }
        self.by_digest.insert(
            blake3::hash(token.as_bytes()).into(),
            Caller {
                role,
                tenants: Arc::new(tenants),
            },
        );
        Ok(())
    }

    /// Adds one `role:tenants:token` entry.
    fn add_entry(&mut self, role: &str, rest: &str) -> Result<(), String> {
        let role: Role = role.parse()?;
        let (tenants, token) = rest.split_once(':').ok_or_else(|| {
            format!(
                "a {role} token names no tenants: write `{role}:*:<token>` for all tenants, \
                 or `{role}:<tenant>+<tenant>:<token>`"
            )
        })?;
        let tenants = tenants
            .parse()
            .map_err(|e| format!("a {role} token: {e}"))?;
        self.add(role, tenants, token.trim())
    }

    /// Adds `role:tenants:token` entries separated by commas.
    pub fn add_list(&mut self, list: &str) -> Result<(), String> {
        for (n, entry) in list.split(',').filter(|p| !p.trim().is_empty()).enumerate() {
            let (role, rest) = entry
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("entry {}: {TOKEN_FORMAT}", n + 1))?;
            self.add_entry(role, rest)
                .map_err(|e| format!("entry {}: {e}", n + 1))?;
        }
        Ok(())
    }

    /// Adds one `role tenants token` (or `role:tenants:token`) per line; `#` starts a comment.
    pub fn add_lines(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let parts: Vec<&str> = line.split_whitespace().collect();
            let result = match parts.as_slice() {
                [role, tenants, token] => self.add_entry(role, &format!("{tenants}:{token}")),
                [entry] => match entry.split_once(':') {
                    Some((role, rest)) => self.add_entry(role, rest),
                    None => Err(format!("expected `role tenants token`; {TOKEN_FORMAT}")),
                },
                [role, rest] => self.add_entry(role, rest),
                _ => Err("expected `role tenants token`".into()),
            };
            result.map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The caller a presented token stands for.
    pub fn caller_of(&self, token: &str) -> Option<&Caller> {
        self.by_digest
            .get(blake3::hash(token.as_bytes()).as_bytes())
    }

    /// Refuses tokens that name a tenant `known` does not contain (a typo would otherwise
    /// leave a token that can do nothing, silently).
    pub fn check_tenants(&self, known: &[&str]) -> Result<(), String> {
        for caller in self.by_digest.values() {
            if let TenantScope::Only(set) = &*caller.tenants {
                for t in set {
                    if !known.contains(&t.as_str()) {
                        return Err(format!(
                            "a {} token names tenant {t:?}, which is not configured \
                             (tenants: {})",
                            caller.role,
                            known.join(", ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Authenticates every call: `authorization: Bearer <token>` must name a configured token.
/// The caller ([`Caller`]: role and tenants) is put into the request's extensions for [`require`].
#[derive(Clone)]
pub struct AuthInterceptor {
    tokens: std::sync::Arc<Tokens>,
    ready: Readiness,
}

impl AuthInterceptor {
    /// Checks bearer tokens; once authenticated, a call is refused with UNAVAILABLE until
    /// `ready` says the service's views have caught up with its log.
    pub fn new(tokens: Tokens, ready: Readiness) -> Self {
        AuthInterceptor {
            tokens: std::sync::Arc::new(tokens),
            ready,
        }
    }
}

/// Whether a service's views have caught up with its log since start-up; until then no RPC
/// behind the interceptor answers from them (DESIGN §5.5). After a fatal failure it is
/// *failed*: RPCs are refused again while the service stops.
#[derive(Clone, Default)]
pub struct Readiness(std::sync::Arc<std::sync::atomic::AtomicU8>);

const STARTING: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;

impl Readiness {
    /// Ready from the start (tools and tests that have no views to wait for).
    pub fn ready() -> Readiness {
        let r = Readiness::default();
        r.set();
        r
    }

    pub fn set(&self) {
        let _ = self.0.compare_exchange(
            STARTING,
            READY,
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
        );
    }

    /// Not ready any more, for good: the service failed and is stopping.
    pub fn fail(&self) {
        self.0.store(FAILED, std::sync::atomic::Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == READY
    }

    fn is_failed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) == FAILED
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        privacy_telemetry::set_parent(
            &tracing::Span::current(),
            privacy_telemetry::extract_grpc(request.metadata()),
        );
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let caller = self
            .tokens
            .caller_of(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown token"))?
            .clone();
        if self.ready.is_failed() {
            return Err(Status::unavailable(
                "stopping after a fatal failure (see the service's log); retry once it restarted",
            ));
        }
        if !self.ready.is_ready() {
            return Err(Status::unavailable(
                "starting: the views are catching up with the log; retry shortly",
            ));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// Refuses the call unless the caller's role is one of `allowed` and its token may act for
/// the request's tenant ([`Scoped`]); returns the caller, whose tenants a list must filter by.
pub fn require<T: Scoped>(request: &Request<T>, allowed: &[Role]) -> Result<Caller, Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))?;
    if !allowed.contains(&caller.role) {
        let names: Vec<_> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(Status::permission_denied(format!(
            "role {} may not call this; allowed: {}",
            caller.role,
            names.join(", ")
        )));
    }
    match request.get_ref().scope() {
        Scope::Tenant(t) | Scope::Filter(t) if !t.is_empty() => caller.check_tenant(t)?,
        Scope::AllTenants if !caller.is_for_all_tenants() => {
            return Err(Status::permission_denied(
                "this acts on every tenant's data: it needs a token for all tenants (`*`)",
            ));
        }
        _ => {}
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    /// Authenticates `auth`, then runs [`require`] on `body` for `allowed`.
    fn call_with<T: Scoped>(
        tokens: &Tokens,
        auth: Option<&str>,
        body: T,
        allowed: &[Role],
    ) -> Result<Caller, Status> {
        let mut req = Request::new(());
        if let Some(a) = auth {
            req.metadata_mut()
                .insert("authorization", a.parse().unwrap());
        }
        let req = AuthInterceptor::new(tokens.clone(), Readiness::ready()).call(req)?;
        let (metadata, extensions, ()) = req.into_parts();
        require(&Request::from_parts(metadata, extensions, body), allowed)
    }

    fn call(tokens: &Tokens, auth: Option<&str>) -> Result<Role, Status> {
        call_with(
            tokens,
            auth,
            VerifyChainRequest::default(),
            &[Role::Operator],
        )
        .map(|c| c.role)
    }

    fn check(tenant: &str) -> CheckConsentRequest {
        CheckConsentRequest {
            tenant: tenant.into(),
            ..Default::default()
        }
    }

    #[test]
    fn tokens_map_to_roles_and_roles_are_enforced() {
        let mut t = Tokens::default();
        t.add_list("operator:*:op-token-1, auditor:acme:au-token-1")
            .unwrap();
        t.add_lines("# comment\nbackend acme+globex be-token-1\n")
            .unwrap();
        assert_eq!(call(&t, Some("Bearer op-token-1")).unwrap(), Role::Operator);
        assert_eq!(
            call(&t, None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            call(&t, Some("Bearer nope-nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            call(&t, Some("op-token-1")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            call(&t, Some("Bearer au-token-1")).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert!(t.add_list("root:*:abcdefgh").is_err());
        assert!(t.add_list("auditor:*:short").is_err());
        assert_eq!(format!("{t:?}"), "Tokens(3 configured)");
    }

    #[test]
    fn tokens_act_only_for_their_tenants() {
        let mut t = Tokens::default();
        t.add_list("operator:*:op-token-1,auditor:acme:au-token-1,backend:acme+globex:be-token-1")
            .unwrap();
        let all = [Role::Operator, Role::Auditor, Role::Backend];
        let ask = |token: &str, tenant: &str| {
            call_with(&t, Some(&format!("Bearer {token}")), check(tenant), &all)
                .map(|_| ())
                .map_err(|s| s.code())
        };
        assert_eq!(ask("op-token-1", "initech"), Ok(()));
        assert_eq!(ask("au-token-1", "acme"), Ok(()));
        assert_eq!(
            ask("au-token-1", "globex"),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(ask("be-token-1", "globex"), Ok(()));
        assert_eq!(
            ask("be-token-1", "initech"),
            Err(tonic::Code::PermissionDenied)
        );
        // An empty tenant is left to the handler, which refuses it as missing.
        assert_eq!(ask("au-token-1", ""), Ok(()));

        // Rebuilding touches every tenant: only a `*` token may.
        let rebuild = |token: &str| {
            call_with(
                &t,
                Some(&format!("Bearer {token}")),
                RebuildProjectionsRequest::default(),
                &all,
            )
            .map(|_| ())
            .map_err(|s| s.code())
        };
        assert_eq!(rebuild("op-token-1"), Ok(()));
        assert_eq!(rebuild("be-token-1"), Err(tonic::Code::PermissionDenied));

        // Store-wide facts carry no tenant's data.
        let verify = call_with(
            &t,
            Some("Bearer au-token-1"),
            VerifyChainRequest::default(),
            &all,
        )
        .unwrap();
        assert!(verify.may_act_for("acme") && !verify.may_act_for("globex"));
    }

    #[test]
    fn token_configuration_errors_are_clear_and_never_show_the_token() {
        let secret = "s3cret-token-value";
        for (list, expect) in [
            (format!("operator:{secret}"), "names no tenants"),
            (format!("operator:Acme:{secret}"), "tenants must be"),
            (format!("operator:acme+:{secret}"), "tenants must be"),
            (format!("wizard:*:{secret}"), "unknown role"),
            (secret.to_owned(), "role:tenants:token"),
        ] {
            let err = Tokens::default().add_list(&list).unwrap_err();
            assert!(err.contains(expect), "{list}: {err}");
            assert!(!err.contains(secret), "{err}");
        }
        let err = Tokens::default()
            .add_lines(&format!("\n\noperator {secret}\n"))
            .unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
        assert!(!err.contains(secret), "{err}");

        let mut t = Tokens::default();
        t.add_list(&format!("auditor:acme+globbex:{secret}"))
            .unwrap();
        let err = t.check_tenants(&["acme", "globex"]).unwrap_err();
        assert!(
            err.contains("\"globbex\"") && err.contains("acme, globex"),
            "{err}"
        );
        assert!(t.check_tenants(&["acme", "globbex"]).is_ok());
    }

    #[test]
    fn a_failed_service_refuses_rpcs_for_good() {
        let mut t = Tokens::default();
        t.add_list("operator:*:op-token-1").unwrap();
        let ready = Readiness::default();
        let mut auth = AuthInterceptor::new(t, ready.clone());
        let mut ask = || {
            let mut req = Request::new(());
            req.metadata_mut()
                .insert("authorization", "Bearer op-token-1".parse().unwrap());
            auth.call(req)
                .map(|_| ())
                .map_err(|s| (s.code(), s.message().to_owned()))
        };
        assert!(ask().unwrap_err().1.starts_with("starting"));
        ready.set();
        assert!(ask().is_ok());
        ready.fail();
        ready.set();
        let (code, message) = ask().unwrap_err();
        assert_eq!(code, tonic::Code::Unavailable);
        assert!(
            message.starts_with("stopping after a fatal failure"),
            "{message}"
        );
    }
}
