//! What can go wrong in a command, said so a person can act on it, and the exit code a script
//! can branch on (the table is in `privacy --help` and the README).

use std::fmt;

use crate::settings::Service;

/// Exit codes.
pub mod exit {
    /// Done; for `verify` every chain is intact, for `consent check` consent is in force.
    pub const OK: u8 = 0;
    /// Anything else that failed (a service error, a file that cannot be written).
    pub const FAILED: u8 = 1;
    /// The command line, the config file or a value sent was wrong (clap also uses 2).
    pub const USAGE: u8 = 2;
    /// The tenant, subject, request, erasure, record… does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// The token is missing, unknown, or its role or tenants do not allow this.
    pub const DENIED: u8 = 4;
    /// A service could not be reached or is not serving yet.
    pub const UNAVAILABLE: u8 = 5;
    /// The answer is no: a chain failed verification, or consent is not in force.
    pub const NO: u8 = 6;
}

pub const EXIT_CODES: &str = "\
Exit codes:
  0  done (verify: every chain intact; consent check: consent in force)
  1  failed (a service error; a file that cannot be written)
  2  bad usage: a flag, the config file, or a value the service refused (it names the field)
  3  not found (tenant, subject, request, erasure, record)
  4  not allowed: the token is missing or unknown, or its role or tenants do not cover this
  5  a service cannot be reached or is not serving
  6  the answer is no: a chain failed verification, or consent is not in force";

#[derive(Debug)]
pub enum Failure {
    /// The config file, a token file, or a flag's value.
    Config(String),
    /// A service answered with an error, or could not be reached.
    Rpc {
        service: Service,
        url: String,
        status: tonic::Status,
        /// Where the token came from, when the service refused it.
        token_source: String,
    },
    /// The answer was no (its explanation is already printed).
    No(String),
    /// Writing the output.
    Io(String),
    /// Standard output was closed by its reader; stop quietly.
    Closed,
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        use tonic::Code;
        match self {
            Failure::Config(_) => exit::USAGE,
            Failure::No(_) => exit::NO,
            Failure::Io(_) => exit::FAILED,
            Failure::Closed => exit::OK,
            Failure::Rpc { status, .. } => match status.code() {
                Code::InvalidArgument | Code::OutOfRange => exit::USAGE,
                Code::NotFound => exit::NOT_FOUND,
                Code::Unauthenticated | Code::PermissionDenied => exit::DENIED,
                Code::Unavailable | Code::DeadlineExceeded => exit::UNAVAILABLE,
                _ => exit::FAILED,
            },
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use tonic::Code;
        match self {
            Failure::Config(m) | Failure::No(m) | Failure::Io(m) => f.write_str(m),
            Failure::Closed => f.write_str("the output was closed"),
            Failure::Rpc {
                service,
                url,
                status,
                token_source,
            } => {
                let name = service.name();
                let message = status.message();
                match status.code() {
                    Code::Unauthenticated if token_source == "nowhere" => write!(
                        f,
                        "{name} needs a bearer token: set PRIVACY_TOKEN, --token-file, or \
                         `token` in the config file"
                    ),
                    Code::Unauthenticated => write!(
                        f,
                        "{name} did not accept the token from {token_source}: {message}"
                    ),
                    Code::PermissionDenied => write!(
                        f,
                        "{name} refused: {message} (the token from {token_source} lacks the \
                         role or tenant this needs)"
                    ),
                    Code::Unavailable => write!(
                        f,
                        "cannot reach {name} at {url}: {message} (is the stack running — \
                         scripts/dev? set {} or {})",
                        service.flag(),
                        service.env()
                    ),
                    Code::DeadlineExceeded => write!(
                        f,
                        "{name} at {url} did not answer in time: {message} (raise \
                         --timeout-secs)"
                    ),
                    Code::Unimplemented => write!(
                        f,
                        "{name} at {url} does not offer this call: {message} (is {} pointing \
                         at the right service?)",
                        service.flag()
                    ),
                    code => write!(f, "{name}: {message} ({})", code_name(code)),
                }
            }
        }
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
