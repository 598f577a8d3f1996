//! Bearer-token roles (DESIGN §4.4): tokens from configuration map to `backend`, `operator` or
//! `auditor`. Only BLAKE3 digests of tokens are kept in memory and nothing about a token is
//! logged. An interceptor authenticates (UNAUTHENTICATED without a known token); each RPC then
//! states which roles may call it (PERMISSION_DENIED otherwise).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

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
            other => Err(format!(
                "unknown role {other:?} (roles: backend, operator, auditor)"
            )),
        }
    }
}

/// Token digests and their roles. Debug output never shows them.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Role>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} configured)", self.by_digest.len())
    }
}

impl Tokens {
    pub fn add(&mut self, role: Role, token: &str) -> Result<(), String> {
        if token.len() < 8 {
            return Err(format!("a {role} token is shorter than 8 characters"));
        }
        self.by_digest
            .insert(blake3::hash(token.as_bytes()).into(), role);
        Ok(())
    }

    /// Adds `role:token` pairs separated by commas.
    pub fn add_list(&mut self, list: &str) -> Result<(), String> {
        for pair in list.split(',').filter(|p| !p.trim().is_empty()) {
            let (role, token) = pair
                .split_once(':')
                .ok_or("expected role:token pairs separated by commas")?;
            self.add(role.parse()?, token.trim())?;
        }
        Ok(())
    }

    /// Adds one `role token` (or `role:token`) per line; `#` starts a comment.
    pub fn add_lines(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (role, token) = line
                .split_once([' ', ':', '\t'])
                .ok_or_else(|| format!("line {}: expected `role token`", n + 1))?;
            self.add(
                role.parse().map_err(|e| format!("line {}: {e}", n + 1))?,
                token.trim(),
            )?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The role of a presented token.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        self.by_digest
            .get(blake3::hash(token.as_bytes()).as_bytes())
            .copied()
    }
}

/// Authenticates every call: `authorization: Bearer <token>` must name a configured token.
/// The caller's [`Role`] is put into the request's extensions for [`require`].
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
        let role = self
            .tokens
            .role_of(token.trim())
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
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
        request.extensions_mut().insert(role);
        Ok(request)
    }
}

/// Refuses the call unless the caller's role is one of `allowed`.
pub fn require<T>(request: &Request<T>, allowed: &[Role]) -> Result<Role, Status> {
    let role = request
        .extensions()
        .get::<Role>()
        .copied()
        .ok_or_else(|| Status::unauthenticated("no authenticated role"))?;
    if allowed.contains(&role) {
        Ok(role)
    } else {
        let names: Vec<_> = allowed.iter().map(|r| r.as_str()).collect();
        Err(Status::permission_denied(format!(
            "role {role} may not call this; allowed: {}",
            names.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn call(tokens: &Tokens, auth: Option<&str>) -> Result<Role, Status> {
        let mut req = Request::new(());
        if let Some(a) = auth {
            req.metadata_mut()
                .insert("authorization", a.parse().unwrap());
        }
        let req = AuthInterceptor::new(tokens.clone(), Readiness::ready()).call(req)?;
        require(&req, &[Role::Operator])
    }

    #[test]
    fn tokens_map_to_roles_and_roles_are_enforced() {
        let mut t = Tokens::default();
        t.add_list("operator:op-token-1, auditor:au-token-1")
            .unwrap();
        t.add_lines("# comment\nbackend be-token-1\n").unwrap();
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
        assert!(t.add_list("root:abcdefgh").is_err());
        assert!(t.add_list("auditor:short").is_err());
        assert_eq!(format!("{t:?}"), "Tokens(3 configured)");
    }

    #[test]
    fn a_failed_service_refuses_rpcs_for_good() {
        let mut t = Tokens::default();
        t.add_list("operator:op-token-1").unwrap();
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
