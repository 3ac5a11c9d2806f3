//! The two ways to install into a cluster, checked offline: `config/default` (kustomize) and
//! the Helm chart. Both must render objects Kubernetes accepts, grant the same least-privilege
//! RBAC, and only set options the operator has.

use std::path::{Path, PathBuf};

use infrapilot::runtime::rbac;
use infrapilot_e2e::{env, operator};
use serde_json::{Value, json};
use tokio::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    env::required_path(
        "INFRAPILOT_TEST_PYTHON",
        "the Python test tools (helm-python-sdk, kubernetes-validate)",
    )
}

async fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .await
        .unwrap_or_else(|e| panic!("{what} could not run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// `kubectl kustomize config/default`.
async fn kustomize() -> String {
    run(
        Command::new("kubectl")
            .args(["kustomize"])
            .arg(root().join("config/default")),
        "kubectl kustomize (kubectl is part of the test machine: see shared/ENVIRONMENT.md)",
    )
    .await
}

/// The chart rendered with `values`, after a strict lint.
async fn helm_template(values: &Value) -> String {
    run(
        Command::new(python())
            .arg(root().join("tests/e2e/support/helm_chart.py"))
            .arg(root().join("charts/infrapilot"))
            .args(["infrapilot", "infrapilot-system"])
            .arg(values.to_string()),
        "helm lint and template",
    )
    .await
}

/// Validates every object of `yaml` against Kubernetes 1.33's own schemas, strictly.
async fn validate(yaml: &str, name: &str) {
    let file = env::test_dir("install").join(format!("{name}.yaml"));
    std::fs::create_dir_all(file.parent().expect("a parent")).expect("the test directory");
    std::fs::write(&file, yaml).expect("the rendered file");
    let tool = python()
        .parent()
        .expect("the venv's bin")
        .join("kubernetes-validate");
    run(
        Command::new(tool)
            .args(["-k", "1.33.0", "--strict", "--quiet"])
            .arg(&file),
        &format!("kubernetes-validate of {name}"),
    )
    .await;
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<_>>(yaml)
        .expect("rendered YAML parses")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The `INFRAPILOT_*` variables a Deployment sets.
fn operator_env(docs: &[Value]) -> Vec<String> {
    find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("an env list")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|n| n.starts_with("INFRAPILOT_"))
        .map(str::to_owned)
        .collect()
}

async fn assert_known_options(variables: &[String], dir: &Path) {
    let help = operator::cli(dir, &["run", "--help"])
        .await
        .expect("infrapilot runs");
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in variables {
        assert!(
            help.contains(&format!("[env: {variable}")),
            "{variable} is set by an installation but is no option of `infrapilot run`"
        );
    }
}

#[tokio::test]
async fn kustomize_and_the_chart_render_valid_objects_with_the_same_rbac() {
    let dir = env::test_dir("install");
    std::fs::create_dir_all(&dir).expect("the test directory");
    let kustomized = kustomize().await;
    validate(&kustomized, "kustomize").await;
    let kustomized = documents(&kustomized);

    let defaults = helm_template(&json!({})).await;
    validate(&defaults, "chart-defaults").await;
    let charted = documents(&defaults);

    // Every CRD, in both.
    for docs in [&kustomized, &charted] {
        let crds = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .count();
        assert_eq!(crds, 6);
    }
    // Least privilege, the same in both: what the controllers use and nothing more.
    for kind in ["ClusterRole", "Role"] {
        assert_eq!(
            find(&kustomized, kind)["rules"],
            find(&charted, kind)["rules"],
            "the {kind} rules of config/rbac and the chart differ"
        );
    }
    // Exactly the rules the registered controllers declare (`infrapilot rbac`).
    let declared = rbac::grants(&rbac::cluster_rules());
    for docs in [&kustomized, &charted] {
        let rules: Vec<rbac::PolicyRule> =
            serde_json::from_value(find(docs, "ClusterRole")["rules"].clone())
                .expect("ClusterRole rules");
        let granted = rbac::grants(&rules);
        assert_eq!(
            granted.difference(&declared).collect::<Vec<_>>(),
            Vec::<&(String, String, String, String)>::new(),
            "granted but not declared by any registered controller"
        );
        assert_eq!(
            declared.difference(&granted).collect::<Vec<_>>(),
            Vec::<&(String, String, String, String)>::new(),
            "declared by a registered controller but not granted"
        );
    }
    let cluster_rules = find(&charted, "ClusterRole")["rules"].to_string();
    assert!(
        !cluster_rules.contains("\"*\""),
        "no wildcards: {cluster_rules}"
    );
    // Secrets are read by reference only: never listed or watched.
    for rule in find(&charted, "ClusterRole")["rules"]
        .as_array()
        .expect("rules")
    {
        if rule["resources"].to_string().contains("secrets") {
            assert_eq!(rule["verbs"], json!(["get"]), "{rule}");
        }
    }
    // Both run the operator in every namespace-scoped object's namespace, restricted.
    for docs in [&kustomized, &charted] {
        let deployment = find(docs, "Deployment");
        assert_eq!(deployment["metadata"]["namespace"], "infrapilot-system");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_known_options(&operator_env(docs), &dir).await;
    }

    // The optional values render valid objects and set options the operator has.
    let tuned = helm_template(&json!({
        "audit": {"keySecret": {"name": "infrapilot-audit"}},
        "state": {"urlSecret": {"name": "infrapilot-state"}},
        "watchNamespace": "apps",
        "leaderElection": {"enabled": false},
        "replicaCount": 1,
        "docker": {"host": "tcp://docker.example:2376", "tlsSecret": "docker-client-tls"},
        "backups": {"volumes": [{
            "name": "shop-backups",
            "mountPath": "/backups/shop",
            "volume": {"persistentVolumeClaim": {"claimName": "shop-backups"}},
        }]},
    }))
    .await;
    validate(&tuned, "chart-tuned").await;
    let tuned = documents(&tuned);
    let variables = operator_env(&tuned);
    for expected in [
        "INFRAPILOT_AUDIT_KEY",
        "INFRAPILOT_STATE",
        "INFRAPILOT_WATCH_NAMESPACE",
    ] {
        assert!(variables.iter().any(|v| v == expected), "{variables:?}");
    }
    assert_known_options(&variables, &dir).await;
    let env = &find(&tuned, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .expect("an env list")
            .iter()
            .any(|e| e["name"] == "DOCKER_HOST" && e["value"] == "tcp://docker.example:2376"),
        "{env}"
    );
    // The engine's TLS files, where DOCKER_CERT_PATH says, read-only, and verified.
    let has = |name: &str, value: &str| {
        env.as_array()
            .expect("an env list")
            .iter()
            .any(|e| e["name"] == name && e["value"] == value)
    };
    assert!(has("DOCKER_TLS_VERIFY", "1"), "{env}");
    assert!(
        has("DOCKER_CERT_PATH", "/etc/infrapilot/docker-tls"),
        "{env}"
    );
    let spec = &find(&tuned, "Deployment")["spec"]["template"]["spec"];
    assert!(
        spec["containers"][0]["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["name"] == "docker-tls"
                && m["mountPath"] == "/etc/infrapilot/docker-tls"
                && m["readOnly"] == true),
        "{:#}",
        spec["containers"][0]["volumeMounts"]
    );
    assert!(
        spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == "docker-tls" && v["secret"]["secretName"] == "docker-client-tls"),
        "{:#}",
        spec["volumes"]
    );
    assert!(
        !tuned.iter().any(|d| d["kind"] == "Role"),
        "no leader election, no Lease role"
    );
    // Backup volumes are mounted read-only where the policies read them.
    let pod = &find(&tuned, "Deployment")["spec"]["template"]["spec"];
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "shop-backups")
        .cloned()
        .expect("the backup volume is mounted");
    assert_eq!(
        (mount["mountPath"].as_str(), mount["readOnly"].as_bool()),
        (Some("/backups/shop"), Some(true))
    );
    assert!(
        pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == "shop-backups"
                && v["persistentVolumeClaim"]["claimName"] == "shop-backups"),
        "{:#}",
        pod["volumes"]
    );
}
