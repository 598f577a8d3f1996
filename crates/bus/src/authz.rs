//! The NATS authorization block that confines each user to its own subjects (DESIGN §4.2, §4.4):
//! a backend may publish only its tenants' user events; a service may publish only its own
//! domain events and dead letters, create the catalogue's durable consumers (interest retention
//! needs them all, see [`crate::ensure_streams`]) and pull and ack only its own. Generated from
//! the event catalogue, so `deploy/nats/nats-authz.example.conf` and the test server's
//! configuration cannot drift from what the services do.

use std::fmt::Write as _;

use crate::BusConfig;
use crate::config::catalogue_filters;
use crate::ingest::consumer_name;

/// A backend's NATS user: who it is and which tenants' events it may publish.
pub struct BackendUser<'a> {
    pub user: &'a str,
    /// The password as the NATS configuration writes it: a quoted literal (`"s3cret"`) or a
    /// variable the server reads from its environment (`$VN_BACKEND_PASSWORD`).
    pub password: &'a str,
    pub tenants: &'a [&'a str],
}

/// The service users: (NATS user = service name, password as the configuration writes it).
pub type ServiceUser<'a> = (&'a str, &'a str);

/// An `authorization { users = [...] }` block for `config`'s subjects and streams.
pub fn authorization(
    config: &BusConfig,
    services: &[ServiceUser<'_>],
    backends: &[BackendUser<'_>],
) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for (service, password) in services {
        let publish = service_publish(config, service);
        user_block(&mut out, service, password, &publish);
    }
    for b in backends {
        let publish: Vec<String> = b
            .tenants
            .iter()
            .map(|t| format!("{}.in.{t}.>", config.prefix))
            .collect();
        user_block(&mut out, b.user, b.password, &publish);
    }
    out.push_str("  ]\n}\n");
    out
}

/// What a service's user may publish (JetStream API calls are publishes too).
fn service_publish(config: &BusConfig, service: &str) -> Vec<String> {
    let p = &config.prefix;
    let input = config.in_stream();
    let mut allow = vec![
        format!("{p}.evt.{service}.>"),
        format!("{p}.dlq.{service}.>"),
        // The outbox reads its last published event back at start-up.
        format!("$JS.API.STREAM.MSG.GET.{}", config.evt_stream()),
    ];
    // A service that issues orders publishes them on its tenants' backends' subjects.
    let issues_orders = privacy_proto::catalogue::ORDER_EVENTS
        .iter()
        .filter_map(|t| privacy_proto::catalogue::domain_event(t))
        .any(|d| d.publisher == service);
    if issues_orders {
        allow.push(format!("{p}.out.>"));
    }
    for (stream, _) in config.streams() {
        for action in ["INFO", "CREATE", "UPDATE"] {
            allow.push(format!("$JS.API.STREAM.{action}.{stream}"));
        }
    }
    let events = config.evt_stream();
    for (owner, name, _) in crate::reaction_consumers(config) {
        if owner == service {
            allow.push(format!("$JS.API.CONSUMER.INFO.{events}.{name}"));
            allow.push(format!("$JS.API.CONSUMER.CREATE.{events}.{name}.>"));
            allow.push(format!("$JS.API.CONSUMER.MSG.NEXT.{events}.{name}"));
            allow.push(format!("$JS.ACK.{events}.{name}.>"));
        }
    }
    for (owner, filter) in catalogue_filters(config) {
        let name = consumer_name(owner, p, &filter);
        allow.push(format!("$JS.API.CONSUMER.INFO.{input}.{name}"));
        allow.push(format!("$JS.API.CONSUMER.CREATE.{input}.{name}.>"));
        if owner == service {
            allow.push(format!("$JS.API.CONSUMER.MSG.NEXT.{input}.{name}"));
            allow.push(format!("$JS.ACK.{input}.{name}.>"));
        }
    }
    allow
}

fn user_block(out: &mut String, user: &str, password: &str, publish: &[String]) {
    let quoted: Vec<String> = publish.iter().map(|s| format!("{s:?}")).collect();
    let _ = write!(
        out,
        "    {{\n      user: {user:?}\n      password: {password}\n      permissions: {{\n        \
         publish: [\n          {}\n        ]\n        subscribe: [\"_INBOX.>\"]\n      }}\n    }}\n",
        quoted.join("\n          ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_pulls_only_its_own_consumers_and_a_backend_publishes_only_its_tenants() {
        let text = authorization(
            &BusConfig::default(),
            &[("consent", "$CONSENT_PASSWORD")],
            &[BackendUser {
                user: "vn-backend",
                password: "\"pw\"",
                tenants: &["vn-apihub"],
            }],
        );
        assert!(text.contains("\"$JS.API.CONSUMER.MSG.NEXT.PRIVACY_IN.consent_all_consent_all\""));
        assert!(!text.contains("MSG.NEXT.PRIVACY_IN.retention"));
        assert!(
            text.contains("\"$JS.API.CONSUMER.CREATE.PRIVACY_IN.retention_all_data_collected.>\"")
        );
        assert!(text.contains("\"privacy.in.vn-apihub.>\""));
        assert!(!text.contains("\"privacy.in.>\""));
        assert!(text.contains("password: $CONSENT_PASSWORD"));
    }
}
