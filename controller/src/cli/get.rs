//! `infrapilot get`: standalone mode's objects, read the way `kubectl get` reads a cluster.

use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};
use serde_json_path::JsonPath;

use super::state::StateArgs;
use crate::api::Kind;
use crate::standalone::store::{Store, StoredObject};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The kind, by name, plural, singular or short name (`px`, `alertchannels`), or `all`.
    pub kind: String,
    /// Only this object.
    pub name: Option<String>,
    #[command(flatten)]
    pub scope: Scope,
    /// Output format: `wide` adds the secondary columns; `yaml` and `json` print the objects.
    #[arg(short = 'o', long, env = "INFRAPILOT_OUTPUT", value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Which namespaces a listing looks in, as `kubectl` takes them (`get`, `alerts`).
#[derive(Clone, Debug, clap::Args)]
pub struct Scope {
    /// The namespace to look in.
    #[arg(
        short = 'n',
        long,
        env = "INFRAPILOT_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Look in every namespace.
    #[arg(short = 'A', long, env = "INFRAPILOT_ALL_NAMESPACES")]
    pub all_namespaces: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Wide,
    Yaml,
    Json,
}

/// The kinds a word names: one kind, or every kind for `all` (our category).
pub fn kinds(word: &str) -> anyhow::Result<Vec<Kind>> {
    if word == "all" || word == "infrapilot" {
        return Ok(Kind::ALL.to_vec());
    }
    Kind::lookup(word).map(|k| vec![k]).with_context(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        format!(
            "there is no resource type {word:?}; the types are {}, or all",
            known.join(", ")
        )
    })
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let kinds = kinds(&args.kind)?;
    anyhow::ensure!(
        args.name.is_none() || kinds.len() == 1,
        "a name needs one resource type, not {:?}",
        args.kind
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::open(args.state.open_existing().await?.pool()).await?;
        let mut found: Vec<(Kind, Vec<StoredObject>)> = Vec::new();
        for kind in &kinds {
            let namespace = match (kind.namespaced(), args.scope.all_namespaces) {
                (false, _) => Some(""),
                (true, true) => None,
                (true, false) => Some(args.scope.namespace.as_str()),
            };
            let mut objects = store.list(Some(kind.name()), namespace).await?;
            if let Some(name) = &args.name {
                objects.retain(|o| &o.key.name == name);
                if objects.is_empty() {
                    eprintln!("Error: {}.{} {name:?} not found", kind.plural(), crate::api::GROUP);
                    return Ok(ExitCode::from(1));
                }
            }
            found.push((*kind, objects));
        }
        let text = render(&found, args, jiff::Timestamp::now())?;
        super::write_stdout(&text)?;
        if found.iter().all(|(_, objects)| objects.is_empty()) && args.output.is_none() {
            if args.scope.all_namespaces {
                eprintln!("No resources found");
            } else {
                eprintln!("No resources found in {} namespace.", args.scope.namespace);
            }
        }
        let problems = store.problems().await?;
        if !problems.is_empty() {
            eprintln!(
                "\nWarning: {} manifest problem(s); objects defined in these files keep their last good version:",
                problems.len()
            );
            for problem in problems {
                eprintln!("  {problem}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn render(
    found: &[(Kind, Vec<StoredObject>)],
    args: &Args,
    now: jiff::Timestamp,
) -> anyhow::Result<String> {
    let objects: Vec<Value> = found
        .iter()
        .flat_map(|(_, objects)| objects.iter().map(StoredObject::full))
        .collect();
    match args.output {
        Some(Output::Json) | Some(Output::Yaml) => {
            let document = if args.name.is_some() && objects.len() == 1 {
                objects[0].clone()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "items": objects})
            };
            Ok(if args.output == Some(Output::Json) {
                serde_json::to_string_pretty(&document)? + "\n"
            } else {
                serde_saphyr::to_string(&document)?
            })
        }
        Some(Output::Wide) | None => {
            let wide = args.output == Some(Output::Wide);
            let qualified = found.len() > 1;
            let mut sections = Vec::new();
            for (kind, objects) in found.iter().filter(|(_, objects)| !objects.is_empty()) {
                sections.push(table(
                    *kind,
                    objects,
                    wide,
                    qualified,
                    args.scope.all_namespaces,
                    now,
                ));
            }
            Ok(sections.join("\n"))
        }
    }
}

/// One kind's objects as a table with the CRD's printer columns.
fn table(
    kind: Kind,
    objects: &[StoredObject],
    wide: bool,
    qualified: bool,
    all_namespaces: bool,
    now: jiff::Timestamp,
) -> String {
    let version = &kind.crd().spec.versions[0];
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .filter(|c| wide || c.priority.unwrap_or(0) == 0)
        .collect();
    let show_namespace = all_namespaces && kind.namespaced();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = Vec::new();
    if show_namespace {
        header.push("NAMESPACE".to_owned());
    }
    header.push("NAME".to_owned());
    header.extend(columns.iter().map(|c| c.name.to_uppercase()));
    rows.push(header);
    for object in objects {
        let full = object.full();
        let mut row = Vec::new();
        if show_namespace {
            row.push(object.key.namespace.clone());
        }
        let singular = kind.crd().spec.names.singular.clone().unwrap_or_default();
        row.push(if qualified {
            format!("{singular}.{}/{}", crate::api::GROUP, object.key.name)
        } else {
            object.key.name.clone()
        });
        for column in &columns {
            row.push(cell(&full, &column.json_path, &column.type_, now));
        }
        rows.push(row);
    }
    format_rows(&rows)
}

/// A printer column's value: the JSONPath's first match, dates as ages.
pub fn cell(object: &Value, json_path: &str, type_: &str, now: jiff::Timestamp) -> String {
    let Ok(path) = JsonPath::parse(&format!("${json_path}")) else {
        return String::new();
    };
    let Some(value) = path.query(object).all().into_iter().next() else {
        return String::new();
    };
    match value {
        Value::String(text) if type_ == "date" => match text.parse::<jiff::Timestamp>() {
            Ok(time) => age(now.duration_since(time).as_secs()),
            Err(_) => text.clone(),
        },
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An age the way kubectl writes it: `45s`, `12m`, `5h`, `3d`.
pub(super) fn age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
pub(super) fn format_rows(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printer_column_paths_select_the_ready_condition() {
        let object = json!({
            "metadata": {"creationTimestamp": "2027-01-15T08:00:00Z"},
            "spec": {"hosts": ["a.example", "b.example"]},
            "status": {"conditions": [
                {"type": "Other", "status": "False"},
                {"type": "Ready", "status": "True", "message": "verified"},
            ]}
        });
        let now: jiff::Timestamp = "2027-01-15T08:05:00Z".parse().unwrap();
        assert_eq!(
            cell(
                &object,
                ".status.conditions[?(@.type==\"Ready\")].status",
                "string",
                now
            ),
            "True"
        );
        assert_eq!(
            cell(
                &object,
                ".status.conditions[?(@.type==\"Ready\")].message",
                "string",
                now
            ),
            "verified"
        );
        assert_eq!(
            cell(&object, ".spec.hosts", "string", now),
            "a.example,b.example"
        );
        assert_eq!(
            cell(&object, ".metadata.creationTimestamp", "date", now),
            "5m"
        );
        assert_eq!(cell(&object, ".status.missing", "string", now), "");
    }

    #[test]
    fn ages_and_tables_look_like_kubectl() {
        assert_eq!(
            [age(59), age(600), age(3 * 3600), age(3 * 86400)],
            ["59s", "10m", "3h", "3d"]
        );
        let rows = vec![
            vec!["NAME".to_owned(), "READY".to_owned()],
            vec!["ops".to_owned(), "True".to_owned()],
        ];
        assert_eq!(format_rows(&rows), "NAME   READY\nops    True\n");
    }

    #[test]
    fn kinds_are_named_like_kubectl_names_them() {
        assert_eq!(kinds("all").unwrap().len(), 6);
        assert_eq!(kinds("ach").unwrap(), [Kind::AlertChannel]);
        assert!(
            kinds("pods")
                .unwrap_err()
                .to_string()
                .contains("there is no resource type \"pods\"")
        );
    }
}
