//! Repository hygiene: every Rust file opens with a `//!` line saying what it is for; services
//! write their logs only through the kit's one door; what a service publishes is in the event
//! catalogue; ARCHITECTURE.md names only paths that exist.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let root = privacy_testkit::workspace_root();
    let mut files = Vec::new();
    for top in ["crates", "services", "tests"] {
        rust_files(&root.join(top), &mut files);
    }
    assert!(files.len() > 30, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading //! line: {missing:?}"
    );
}

fn sources_under(dir: &str) -> Vec<(String, String)> {
    let root = privacy_testkit::workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f.strip_prefix(&root).unwrap().display().to_string(), text)
        })
        .collect()
}

#[test]
fn services_write_only_through_the_kits_door() {
    // Building an envelope, an event to store, or appending: the kit's door does these.
    let forbidden = [
        "Envelope {",
        "NewEvent",
        ".append(",
        ".submit(",
        "ExpectedVersion",
    ];
    let mut found = Vec::new();
    for (path, text) in sources_under("services") {
        for (n, line) in text.lines().enumerate() {
            for pattern in forbidden {
                if line.contains(pattern) {
                    found.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "services must use ServiceContext::command / emit / DomainService::derive:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_grpc_server_takes_no_larger_messages_than_nats() {
    // tonic's default is 4 MiB; the contract's limit (64 KiB, as on NATS) must hold on gRPC.
    let mut found = Vec::new();
    for root in ["services", "crates/service-kit"] {
        for (path, text) in sources_under(root) {
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                let next = lines.get(n + 1).copied().unwrap_or_default();
                if line.contains("ServiceServer::new(")
                    && !line.contains("fn ")
                    && !format!("{line}{next}").contains(".max_decoding_message_size(")
                {
                    found.push(format!("{path}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "chain .max_decoding_message_size(ctx.limits.max_message_bytes) on the server:\n{}",
        found.join("\n")
    );
}

#[test]
fn services_publish_only_catalogue_events_they_own() {
    use privacy_proto::EventType;
    use privacy_proto::catalogue::{DOMAIN_EVENTS, domain_event};
    let specs = [
        privacy_consent::SPEC,
        privacy_subject_requests::SPEC,
        privacy_retention::SPEC,
        privacy_disclosure_log::SPEC,
    ];
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    for spec in specs {
        for t in spec.publishes {
            let owned = match t.parse::<EventType>() {
                Ok(user) => user.consumers().contains(&spec.name),
                Err(_) => domain_event(t).is_some_and(|d| d.publisher == spec.name),
            };
            assert!(
                owned,
                "{} publishes {t}, which the catalogue does not give it",
                spec.name
            );
        }
    }
    for t in EventType::ALL {
        for c in t.consumers() {
            assert!(names.contains(c), "{t} names an unknown consumer {c}");
        }
    }
    for d in DOMAIN_EVENTS {
        if d.publisher == privacy_proto::catalogue::ANY_SERVICE {
            // Emitted through the kit by every service: none lists it, all publish it.
            assert!(
                specs.iter().all(|s| !s.publishes.contains(&d.name)),
                "{}",
                d.name
            );
            assert!(specs.iter().all(|s| s.publishes(d.name)), "{}", d.name);
            continue;
        }
        assert!(
            names.contains(&d.publisher),
            "{} names an unknown publisher",
            d.name
        );
        let spec = specs.iter().find(|s| s.name == d.publisher).unwrap();
        assert!(
            spec.publishes(d.name),
            "{} emits {} but does not publish it",
            spec.name,
            d.name
        );
    }
}

#[test]
fn architecture_names_only_paths_that_exist() {
    let root = privacy_testkit::workspace_root();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut checked = 0;
    let mut missing = Vec::new();
    for (i, token) in text.split('`').enumerate() {
        // Odd pieces are inside backticks.
        let looks_like_path = i % 2 == 1
            && token.contains('/')
            && !token.contains([' ', '<', '*', '{', '(', '>'])
            && !token.starts_with("privacy.")
            && !token.contains("://");
        if !looks_like_path {
            continue;
        }
        let path = token.split("::").next().unwrap().trim_end_matches('/');
        // `shared/` lies beside the checkout.
        let exists = ["", "crates", "services", ".."]
            .iter()
            .any(|base| root.join(base).join(path).exists());
        checked += 1;
        if !exists {
            missing.push(path.to_owned());
        }
    }
    assert!(
        checked > 20,
        "only {checked} paths found in ARCHITECTURE.md"
    );
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names paths that do not exist: {missing:?}"
    );
}
