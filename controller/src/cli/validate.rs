//! `infrapilot validate`: check manifests offline.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::manifest::{self, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or directories (every `*.yaml` / `*.yml` below them).
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        env = "INFRAPILOT_VALIDATE_FILENAME",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub paths: Vec<PathBuf>,
}

/// The report of a validation: one line per problem, then a summary; `ok` when nothing is
/// invalid.
pub fn report(outcomes: &[Outcome]) -> (String, bool) {
    let mut lines = Vec::new();
    let (mut valid, mut invalid, mut skipped) = (0, 0, 0);
    let mut seen: HashMap<(String, Option<String>, String), (String, u64)> = HashMap::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Valid(m) => {
                let key = (
                    m.kind_name().to_owned(),
                    m.namespace.clone(),
                    m.name.clone(),
                );
                if let Some((file, line)) = seen.get(&key) {
                    invalid += 1;
                    lines.push(format!(
                        "{}:{}: {} {} is defined twice: first at {file}:{line}",
                        m.file,
                        m.line,
                        m.kind_name(),
                        qualified(m.namespace.as_deref(), &m.name)
                    ));
                } else {
                    valid += 1;
                    seen.insert(key, (m.file.clone(), m.line));
                }
            }
            Outcome::Skipped { .. } => skipped += 1,
            Outcome::Invalid(problems) => {
                invalid += 1;
                lines.extend(problems.iter().map(ToString::to_string));
            }
        }
    }
    lines.push(format!(
        "{valid} valid, {invalid} invalid, {skipped} skipped (not InfraPilot kinds)"
    ));
    (lines.join("\n") + "\n", invalid == 0)
}

fn qualified(namespace: Option<&str>, name: &str) -> String {
    namespace.map_or_else(|| name.to_owned(), |ns| format!("{ns}/{name}"))
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let outcomes: Vec<Outcome> = args
        .paths
        .iter()
        .flat_map(|p| manifest::read_path(p))
        .collect();
    let (text, ok) = report(&outcomes);
    super::write_stdout(&text)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::report;
    use crate::manifest::read_str;

    const CHANNEL: &str = "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: ops\nspec:\n  webhook:\n    url: http://127.0.0.1:9/hook\n";

    #[test]
    fn the_report_lists_problems_and_counts() {
        let bad = CHANNEL.replace(
            "  webhook:\n    url: http://127.0.0.1:9/hook\n",
            "  verify: true\n",
        );
        let mut outcomes = read_str("a.yaml", CHANNEL);
        outcomes.extend(read_str("b.yaml", &bad));
        outcomes.extend(read_str(
            "c.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
        ));
        let (text, ok) = report(&outcomes);
        assert!(!ok);
        assert!(
            text.contains("b.yaml:6:3: spec: exactly one of smtp, slack or webhook must be set"),
            "{text}"
        );
        assert!(
            text.ends_with("1 valid, 1 invalid, 1 skipped (not InfraPilot kinds)\n"),
            "{text}"
        );
    }

    #[test]
    fn an_object_defined_twice_is_reported() {
        let mut outcomes = read_str("a.yaml", CHANNEL);
        outcomes.extend(read_str("b.yaml", CHANNEL));
        let (text, ok) = report(&outcomes);
        assert!(!ok);
        assert!(
            text.contains("b.yaml:1: AlertChannel default/ops is defined twice: first at a.yaml:1"),
            "{text}"
        );
    }
}

#[cfg(test)]
mod examples {
    use std::collections::BTreeSet;
    use std::path::Path;

    use crate::api::Kind;
    use crate::manifest::{Object, Outcome, read_path};

    #[test]
    fn every_example_is_valid_and_every_kind_has_one() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let outcomes = read_path(&dir);
        let (text, ok) = super::report(&outcomes);
        assert!(ok, "examples/ has invalid manifests:\n{text}");
        let kinds: BTreeSet<Kind> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Valid(m) => match &m.object {
                    Object::Custom { kind, .. } => Some(*kind),
                    Object::Secret(_) => None,
                },
                _ => None,
            })
            .collect();
        for kind in Kind::ALL {
            assert!(kinds.contains(&kind), "examples/ has no {kind}");
        }
        assert!(
            dir.join("quickstart").is_dir(),
            "examples/quickstart is missing"
        );
    }
}
