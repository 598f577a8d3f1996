//! The `privacy` CLI as its users run it: the built binary, as a child process, against the four
//! services over real gRPC (with a real NATS behind them). Checks what it prints — tables,
//! `--json`, CSV export — and the exit codes scripts branch on.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use privacy_e2e::*;
use privacy_proto::v1::*;
use privacy_testkit::NatsServer;
use serde_json::Value;

use crate::retention::{collected, event};

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `privacy` with exactly these `PRIVACY_*` settings (and a HOME without a config file).
pub(crate) async fn privacy(home: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let mut command = Command::new(privacy_testkit::bin_dir().join("privacy"));
    command
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home);
    for (key, _) in std::env::vars() {
        if key.starts_with("PRIVACY_") {
            command.env_remove(key);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the privacy binary runs (cargo build --workspace --bins)");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_every_service_and_its_exit_codes_say_what_happened() {
    let nats = NatsServer::start();
    let data = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let stack = Stack::start(&nats.url(), data.path()).await;
    let (consent, requests, retention, disclosures) = (
        &stack.consent,
        &stack.requests,
        &stack.retention,
        &stack.disclosures,
    );
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let s = "u-cli";

    publish_policy_v1(&consent.url()).await;
    let mut grant = envelope(s, granted("marketing"));
    grant.occurred_at = Some(std::time::SystemTime::now().into());
    publish_acked(&js, &grant).await;
    publish_acked(&js, &envelope(s, disclosed_to("Acme Logistics"))).await;
    publish_acked(
        &js,
        &event(
            s,
            "2026-11-20",
            collected("contact", "accounts", "provide_service"),
        ),
    )
    .await;
    let mut r = requests_client(&requests.url(), OPERATOR_TOKEN).await;
    let request = open_request(&mut r, s, RequestType::Erasure).await;
    for (svc, head) in [(consent, 2), (disclosures, 1), (retention, 1)] {
        let mut audit = audit_client(&svc.url(), Some(AUDITOR_TOKEN)).await;
        wait_for_head(&mut audit, head, Duration::from_secs(20)).await;
    }

    let urls = vec![
        ("PRIVACY_CONSENT_URL", consent.url()),
        ("PRIVACY_SUBJECT_REQUESTS_URL", requests.url()),
        ("PRIVACY_RETENTION_URL", retention.url()),
        ("PRIVACY_DISCLOSURE_LOG_URL", disclosures.url()),
    ];
    let with = |token: &str| {
        let mut env = urls.clone();
        env.push(("PRIVACY_TOKEN", token.to_owned()));
        env
    };
    let auditor = with(AUDITOR_TOKEN);
    let operator = with(OPERATOR_TOKEN);
    let h = home.path();

    // verify: every chain, one summary.
    let verified = privacy(h, &auditor, &["verify", "--json"])
        .await
        .ok()
        .json();
    let rows = verified.as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["consent", "subject-requests", "retention", "disclosure-log"]
    );
    assert!(rows.iter().all(|r| r["ok"] == true), "{verified}");
    assert!(rows[0]["headSeq"].as_u64().unwrap() >= 2, "{verified}");
    let table = privacy(h, &auditor, &["verify"]).await.ok().stdout;
    assert!(table.starts_with("SERVICE "), "{table}");
    assert_eq!(table.matches(" intact ").count(), 4, "{table}");

    // consent: check (exit 0 / 6), history, receipt.
    let check = |purpose: &'static str| {
        let env = auditor.clone();
        async move {
            privacy(
                h,
                &env,
                &[
                    "consent",
                    "check",
                    "--tenant",
                    TENANT,
                    "--subject",
                    s,
                    "--purpose",
                    purpose,
                ],
            )
            .await
        }
    };
    let yes = check("marketing").await.ok();
    assert!(
        yes.stdout.starts_with("allowed         yes\n"),
        "{}",
        yes.stdout
    );
    let no = check("analytics").await;
    assert_eq!(no.code, 6, "{}{}", no.stdout, no.stderr);
    assert!(no.stdout.contains("allowed         no"), "{}", no.stdout);
    assert!(
        no.stderr.contains("no consent in force for analytics"),
        "{}",
        no.stderr
    );
    let history = privacy(
        h,
        &auditor,
        &[
            "consent",
            "history",
            "--tenant",
            TENANT,
            "--subject",
            s,
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let entries = history.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{history}");
    assert_eq!(entries[0]["state"], "given");
    let record = entries[0]["recordId"].as_str().unwrap();
    let receipt = privacy(
        h,
        &auditor,
        &[
            "consent",
            "receipt",
            "--tenant",
            TENANT,
            "--subject",
            s,
            "--record",
            record,
        ],
    )
    .await
    .ok();
    assert!(receipt.stdout.contains(record), "{}", receipt.stdout);
    receipt.json();

    // requests: list (table, CSV export), show, an unknown id.
    let list = privacy(h, &auditor, &["requests", "list", "--tenant", TENANT])
        .await
        .ok()
        .stdout;
    let line = list
        .lines()
        .find(|l| l.starts_with(&request.request_id))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains(" erasure ") && line.contains(" received "),
        "{line}"
    );
    let csv = home.path().join("requests.csv");
    privacy(
        h,
        &auditor,
        &[
            "export",
            "--format",
            "csv",
            "--out",
            csv.to_str().unwrap(),
            "requests",
            "--tenant",
            TENANT,
            "--state",
            "received",
        ],
    )
    .await
    .ok();
    let csv = std::fs::read_to_string(&csv).unwrap();
    let mut lines = csv.split("\r\n");
    assert_eq!(
        lines.next().unwrap(),
        "REQUEST,SUBJECT,TYPE,STATE,RECEIVED,DUE (LAW),DUE (PROMISE),OVERDUE,WAITING ON"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&format!("{},{s},erasure,received,", request.request_id)),
        "{row}"
    );
    let shown = privacy(
        h,
        &auditor,
        &[
            "requests",
            "show",
            "--tenant",
            TENANT,
            "--id",
            &request.request_id,
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(shown["requestId"], request.request_id.as_str());
    assert_eq!(shown["state"], "REQUEST_STATE_RECEIVED");
    let missing = privacy(
        h,
        &auditor,
        &["requests", "show", "--tenant", TENANT, "--id", "nope"],
    )
    .await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);

    // disclosures: the accounting and the recipients.
    let account = privacy(
        h,
        &auditor,
        &["disclosures", "account", "--tenant", TENANT, "--subject", s],
    )
    .await
    .ok()
    .stdout;
    assert!(
        account.contains("Acme Logistics") && account.contains(" processor "),
        "{account}"
    );
    let recipients = privacy(
        h,
        &auditor,
        &[
            "disclosures",
            "recipients",
            "--tenant",
            TENANT,
            "--subject",
            s,
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(recipients[0]["recipient"], "Acme Logistics", "{recipients}");

    // holds and erasure need an operator; the auditor is refused (exit 4).
    let place = [
        "holds",
        "place",
        "--tenant",
        TENANT,
        "--subject",
        s,
        "--reason",
        "litigation-1",
        "--placed-by",
        "legal",
        "--json",
    ];
    let refused = privacy(h, &auditor, &place).await;
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("lacks the role or tenant"),
        "{}",
        refused.stderr
    );
    let hold = privacy(h, &operator, &place).await.ok().json();
    let hold_id = hold["holdId"].as_str().unwrap();
    let held = privacy(h, &auditor, &["holds", "list", "--tenant", TENANT])
        .await
        .ok()
        .stdout;
    assert!(
        held.contains(hold_id) && held.contains("litigation-1"),
        "{held}"
    );
    // The hold is in retention's log, its body decoded beside its bytes.
    let events = privacy(
        h,
        &auditor,
        &[
            "events",
            "--service",
            "retention",
            "--type",
            "hold.placed",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert_eq!(
        events[0]["envelope"]["domainEvent"]["bodyJson"]["hold"]["holdId"],
        hold_id
    );
    privacy(
        h,
        &operator,
        &[
            "holds",
            "release",
            "--tenant",
            TENANT,
            "--id",
            hold_id,
            "--reason",
            "case_closed",
        ],
    )
    .await
    .ok();
    let held = privacy(
        h,
        &auditor,
        &["holds", "list", "--tenant", TENANT, "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(held, Value::Array(vec![]));
    let plan = privacy(
        h,
        &operator,
        &[
            "erasure",
            "start",
            "--tenant",
            TENANT,
            "--subject",
            s,
            "--reason",
            "subject_request",
            "--dry-run",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(plan["subjectId"], s, "{plan}");
    // A value the service refuses: exit 2, the field named.
    let bad = privacy(
        h,
        &operator,
        &[
            "erasure",
            "start",
            "--tenant",
            TENANT,
            "--subject",
            s,
            "--reason",
            "Ann asked",
        ],
    )
    .await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("reason"), "{}", bad.stderr);

    // events: filters, JSON Lines export, a time range with nothing in it.
    let granted = privacy(
        h,
        &auditor,
        &[
            "export",
            "events",
            "--tenant",
            TENANT,
            "--subject",
            s,
            "--type",
            "consent.granted",
        ],
    )
    .await
    .ok()
    .stdout;
    let lines: Vec<Value> = granted
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{granted}");
    assert_eq!(lines[0]["service"], "consent");
    assert_eq!(lines[0]["envelope"]["subjectId"], s);
    let none = privacy(h, &auditor, &["events", "--since", "2100-01-01", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(none, Value::Array(vec![]));

    // rebuild: progress on standard error, each projection's digest on standard output, equal
    // to the live projection's.
    let before = privacy(h, &auditor, &["status", "--service", "consent", "--json"])
        .await
        .ok()
        .json();
    // Checkpoints only: the same projections and checkpoints, no digests.
    let light = privacy(
        h,
        &auditor,
        &[
            "status",
            "--service",
            "consent",
            "--checkpoints-only",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let names = |rows: &Value, with_digest: bool| -> Vec<(Value, Value, bool)> {
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].clone(),
                    r["checkpoint"].clone(),
                    r.get("digest").is_some() == with_digest,
                )
            })
            .collect()
    };
    assert_eq!(
        names(&light, false),
        names(&before, true),
        "{light} vs {before}"
    );
    let rebuilt = privacy(h, &operator, &["rebuild", "--service", "consent", "--json"])
        .await
        .ok();
    assert!(
        rebuilt.stderr.contains("consent: rebuilt from"),
        "{}",
        rebuilt.stderr
    );
    let rebuilt = rebuilt.json();
    for p in rebuilt.as_array().unwrap() {
        let live = before
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == p["name"])
            .unwrap_or_else(|| panic!("{before}"));
        assert_eq!(live["digest"], p["digest"], "{}", p["name"]);
    }

    // Exit codes for what goes wrong around the call.
    let unknown = privacy(h, &with("not-a-token"), &["verify", "--service", "consent"]).await;
    assert_eq!(unknown.code, 4, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("did not accept the token from"),
        "{}",
        unknown.stderr
    );
    assert!(
        !unknown.stderr.contains("not-a-token"),
        "the token is never printed"
    );
    let scoped = with(TENANT_AUDITOR_TOKEN);
    let other = privacy(
        h,
        &scoped,
        &["consent", "history", "--tenant", "ru-crm", "--subject", s],
    )
    .await;
    assert_eq!(other.code, 4, "{}", other.stderr);
    let no_tenant = privacy(
        h,
        &auditor,
        &[
            "consent",
            "history",
            "--tenant",
            "no-such-tenant",
            "--subject",
            s,
        ],
    )
    .await;
    assert_eq!(no_tenant.code, 3, "{}", no_tenant.stderr);
    let mut down = auditor.clone();
    down[0].1 = "http://127.0.0.1:1".into();
    let unreachable = privacy(h, &down, &["verify", "--service", "consent"]).await;
    assert_eq!(unreachable.code, 5, "{}", unreachable.stderr);
    assert!(
        unreachable.stderr.contains("PRIVACY_CONSENT_URL"),
        "{}",
        unreachable.stderr
    );
    // Only the services a command calls need a valid URL.
    let mut odd = auditor.clone();
    odd[2].1 = "not a url".into();
    privacy(
        h,
        &odd,
        &[
            "consent",
            "check",
            "--tenant",
            TENANT,
            "--subject",
            s,
            "--purpose",
            "marketing",
        ],
    )
    .await
    .ok();
    let bad_url = privacy(h, &odd, &["verify", "--service", "retention"]).await;
    assert_eq!(bad_url.code, 2, "{}", bad_url.stderr);
    assert!(
        bad_url.stderr.contains("PRIVACY_RETENTION_URL"),
        "{}",
        bad_url.stderr
    );
    let usage = privacy(h, &auditor, &["requests", "list"]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);
    assert!(usage.stderr.contains("--tenant"), "{}", usage.stderr);

    // The same settings from a config file alone.
    let config = home.path().join("privacy/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "token = \"{AUDITOR_TOKEN}\"\n[urls]\nconsent = \"{}\"\n",
            consent.url()
        ),
    )
    .unwrap();
    let from_file = privacy(h, &[], &["verify", "--service", "consent", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(from_file[0]["ok"], true, "{from_file}");

    stack.stop().await;
}
