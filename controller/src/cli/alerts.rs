//! `infrapilot alerts`: every pending and firing alert across the AlertRules of standalone
//! mode, one line each, as `amtool alert` lists Alertmanager's.

use std::process::ExitCode;

use serde_json::Value;

use super::get::{Scope, format_rows};
use super::state::StateArgs;
use crate::api::Kind;
use crate::api::alert::{AlertRule, AlertState};
use crate::standalone::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub scope: Scope,
    /// Only firing alerts, not pending ones.
    #[arg(long, env = "INFRAPILOT_ALERTS_FIRING")]
    pub firing: bool,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::open(args.state.open_existing().await?.pool()).await?;
        let namespace = (!args.scope.all_namespaces).then_some(args.scope.namespace.as_str());
        let rules: Vec<Value> = store
            .list(Some(Kind::AlertRule.name()), namespace)
            .await?
            .iter()
            .map(|o| o.full())
            .collect();
        let text = table(&rules, args, jiff::Timestamp::now());
        super::write_stdout(&text)?;
        if text.is_empty() {
            eprintln!("No alerts");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// One row per alert: rule, subject, state, since, value (pure, for the tests).
fn table(rules: &[Value], args: &Args, now: jiff::Timestamp) -> String {
    let mut rows = Vec::new();
    for value in rules {
        let Ok(rule) = serde_json::from_value::<AlertRule>(value.clone()) else {
            continue;
        };
        let name = rule.metadata.name.clone().unwrap_or_default();
        let namespace = rule.metadata.namespace.clone().unwrap_or_default();
        let severity = format!("{:?}", rule.spec.severity);
        for alert in rule.status.iter().flat_map(|s| s.active_alerts.iter()) {
            if args.firing && alert.state != AlertState::Firing {
                continue;
            }
            let mut row = Vec::new();
            if args.scope.all_namespaces {
                row.push(namespace.clone());
            }
            row.extend([
                name.clone(),
                alert.subject.clone(),
                format!("{:?}", alert.state),
                severity.clone(),
                super::get::age(now.duration_since(alert.since.0).as_secs()),
                alert.message.clone(),
            ]);
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut header: Vec<String> = Vec::new();
    if args.scope.all_namespaces {
        header.push("NAMESPACE".into());
    }
    header.extend(["RULE", "SUBJECT", "STATE", "SEVERITY", "SINCE", "VALUE"].map(String::from));
    rows.insert(0, header);
    format_rows(&rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(all: bool, firing: bool) -> Args {
        Args {
            scope: Scope {
                namespace: "default".into(),
                all_namespaces: all,
            },
            firing,
            state: StateArgs {
                state_dir: ".infrapilot".into(),
                state: None,
            },
        }
    }

    #[test]
    fn pending_and_firing_alerts_are_listed_across_rules() {
        let rule = |ns: &str, name: &str, alerts: Value| {
            json!({"apiVersion": "infrapilot.io/v1alpha1", "kind": "AlertRule",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"backupValidationFailed": {}, "channels": [{"name": "ops"}],
                    "severity": "Critical"},
                "status": {"activeAlerts": alerts}})
        };
        let rules = [
            rule(
                "shop",
                "backups",
                json!([{"subject": "nightly", "state": "Firing", "since": "2026-12-04T10:00:00Z",
                    "message": "2 failed validation runs in a row"}]),
            ),
            rule(
                "web",
                "certs",
                json!([{"subject": "www", "state": "Pending", "since": "2026-12-04T11:30:00Z"}]),
            ),
            rule("web", "quiet", json!([])),
        ];
        let now: jiff::Timestamp = "2026-12-04T12:00:00Z".parse().unwrap();
        let text = table(&rules, &args(true, false), now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAMESPACE   RULE"), "{text}");
        assert!(
            lines[1].contains("nightly") && lines[1].contains("Firing"),
            "{text}"
        );
        assert!(
            lines[1].contains("2h") && lines[1].contains("Critical"),
            "{text}"
        );
        assert!(
            lines[2].contains("www") && lines[2].contains("Pending"),
            "{text}"
        );
        let firing = table(&rules, &args(true, true), now);
        assert_eq!(firing.lines().count(), 2, "{firing}");
        assert!(table(&rules[2..], &args(false, false), now).is_empty());
    }
}
