//! `infrapilot describe`: one object in full, with its conditions and recent events.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde_json::Value;

use super::get::kinds;
use super::state::StateArgs;
use crate::standalone::store::{Store, StoredEvent, StoredObject};
use crate::standalone::sync::Key;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kind, by name, plural, singular or short name.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// The namespace to look in.
    #[arg(
        short = 'n',
        long,
        env = "INFRAPILOT_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let found = kinds(&args.kind)?;
    anyhow::ensure!(
        found.len() == 1,
        "describe needs one resource type, not {:?}",
        args.kind
    );
    let kind = found[0];
    let key = Key {
        kind: kind.name().to_owned(),
        namespace: if kind.namespaced() {
            args.namespace.clone()
        } else {
            String::new()
        },
        name: args.name.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::open(args.state.open_existing().await?.pool()).await?;
        let Some(object) = store.get(&key).await? else {
            eprintln!(
                "Error: {}.{} {:?} not found",
                kind.plural(),
                crate::api::GROUP,
                args.name
            );
            return Ok(ExitCode::from(1));
        };
        let events = store.events(&key, 20).await?;
        let text = render(&object, &events)?;
        super::write_stdout(&text)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn render(object: &StoredObject, events: &[StoredEvent]) -> anyhow::Result<String> {
    let mut out = String::new();
    let meta = &object.object["metadata"];
    let field = |name: &str| {
        meta.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    writeln!(out, "Name:         {}", object.key.name)?;
    if !object.key.namespace.is_empty() {
        writeln!(out, "Namespace:    {}", object.key.namespace)?;
    }
    writeln!(out, "Kind:         {}", object.key.kind)?;
    writeln!(out, "UID:          {}", object.uid)?;
    writeln!(out, "Generation:   {}", object.generation)?;
    writeln!(out, "Created:      {}", field("creationTimestamp"))?;
    if object.file == crate::standalone::sync::OPERATOR_MADE {
        // A policy's run, say: it has no manifest.
        writeln!(out, "Source:       made by the operator")?;
    } else {
        writeln!(out, "Source:       {}:{}", object.file, object.line)?;
    }
    if object.deleting {
        writeln!(
            out,
            "Deleting:     its manifest is gone; cleanup is running"
        )?;
    }
    if let Some(labels) = meta
        .get("labels")
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
    {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        writeln!(out, "Labels:       {}", labels.join(", "))?;
    }
    writeln!(out, "Spec:")?;
    out.push_str(&indent(&serde_saphyr::to_string(
        object.object.get("spec").unwrap_or(&Value::Null),
    )?));

    let mut status = object.status.clone().unwrap_or(Value::Null);
    let conditions = status.as_object_mut().and_then(|s| s.remove("conditions"));
    writeln!(out, "Status:")?;
    if status.as_object().is_some_and(|s| !s.is_empty()) {
        out.push_str(&indent(&serde_saphyr::to_string(&status)?));
    } else {
        writeln!(out, "  (not reconciled yet)")?;
    }
    if let Some(Value::Array(conditions)) = conditions {
        writeln!(out, "Conditions:")?;
        let mut rows = vec![
            ["Type", "Status", "Reason", "Last Transition", "Message"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for c in &conditions {
            let get = |k: &str| {
                c.get(k).map_or_else(String::new, |v| {
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
                })
            };
            rows.push(vec![
                get("type"),
                get("status"),
                get("reason"),
                get("lastTransitionTime"),
                get("message"),
            ]);
        }
        out.push_str(&indent(&super::get::format_rows(&rows)));
    }
    writeln!(out, "Events:")?;
    if events.is_empty() {
        writeln!(out, "  <none>")?;
    } else {
        let mut rows = vec![
            ["Time", "Type", "Reason", "Action", "Note"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for e in events {
            let type_ = match e.event.type_ {
                crate::reconcile::EventType::Normal => "Normal",
                crate::reconcile::EventType::Warning => "Warning",
            };
            rows.push(vec![
                e.time
                    .parse::<jiff::Timestamp>()
                    .map_or_else(|_| e.time.clone(), |t| format!("{t:.0}")),
                type_.to_owned(),
                e.event.reason.clone(),
                e.event.action.clone(),
                e.event.note.clone(),
            ]);
        }
        out.push_str(&indent(&super::get::format_rows(&rows)));
    }
    Ok(out)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::reconcile::{Event, EventType};

    #[test]
    fn a_description_shows_metadata_spec_status_conditions_and_events() {
        let object = StoredObject {
            key: Key {
                kind: "AlertChannel".to_owned(),
                namespace: "default".to_owned(),
                name: "ops".to_owned(),
            },
            uid: "u-1".to_owned(),
            generation: 2,
            object: json!({"metadata": {"name": "ops", "creationTimestamp": "2027-01-15T08:00:00Z", "labels": {"team": "a"}}, "spec": {"verify": true}}),
            status: Some(
                json!({"verified": true, "conditions": [{"type": "Ready", "status": "True", "reason": "Verified", "message": "delivered", "lastTransitionTime": "2027-01-15T08:00:01Z"}]}),
            ),
            deleting: false,
            file: "m/ops.yaml".to_owned(),
            line: 1,
        };
        let events = [StoredEvent {
            time: "2027-01-15T08:00:01.000000000Z".to_owned(),
            event: Event {
                type_: EventType::Normal,
                reason: "Verified".to_owned(),
                action: "Verify".to_owned(),
                note: "delivered".to_owned(),
            },
        }];
        let text = render(&object, &events).unwrap();
        for expected in [
            "Name:         ops\n",
            "Generation:   2\n",
            "Source:       m/ops.yaml:1\n",
            "Labels:       team=a\n",
            "Spec:\n  verify: true\n",
            "Status:\n  verified: true\n",
            "  Type    Status   Reason     Last Transition        Message\n  Ready   True     Verified   2027-01-15T08:00:01Z   delivered\n",
            "  2027-01-15T08:00:01Z   Normal   Verified   Verify   delivered\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }
}
