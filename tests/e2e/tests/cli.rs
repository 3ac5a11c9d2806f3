//! The `infrapilot` command line as a user runs it.

use std::path::PathBuf;

use infrapilot_e2e::{env, operator};

const GOOD: &str = "apiVersion: infrapilot.io/v1alpha1
kind: AlertChannel
metadata:
  name: ops
spec:
  webhook:
    url: http://127.0.0.1:9/hook
";

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn validate_names_file_line_field_and_reason_and_fails_on_a_bad_manifest() {
    let dir = env::test_dir("cli-validate");
    std::fs::write(dir.join("good.yaml"), GOOD).unwrap();
    let output = operator::cli(&dir, &["validate", "-f", "good.yaml"])
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "1 valid, 0 invalid, 0 skipped (not InfraPilot kinds)\n"
    );

    let bad = GOOD.replace(
        "url: http://127.0.0.1:9/hook",
        "url: ftp://example.com\n    methd: PUT",
    );
    std::fs::create_dir_all(dir.join("more")).unwrap();
    std::fs::write(dir.join("more/bad.yaml"), bad).unwrap();
    let output = operator::cli(&dir, &["validate", "-f", "."]).await.unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = stdout(&output);
    assert!(text.contains("./more/bad.yaml:7:10: spec.webhook.url: \"ftp://example.com\" must be text matching ^https?://"), "{text}");
    assert!(
        text.contains("./more/bad.yaml:8:5: spec.webhook.methd: unknown field \"methd\""),
        "{text}"
    );
    assert!(
        text.ends_with("1 valid, 1 invalid, 0 skipped (not InfraPilot kinds)\n"),
        "{text}"
    );
}

#[tokio::test]
async fn crd_prints_every_crd_and_they_pass_kubernetes_own_crd_schema() {
    let dir = env::test_dir("cli-crd");
    let output = operator::cli(&dir, &["crd"]).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    std::fs::write(dir.join("crds.yaml"), &output.stdout).unwrap();
    assert_eq!(
        stdout(&output)
            .matches("kind: CustomResourceDefinition")
            .count(),
        6
    );

    // kubernetes-validate checks built-in kinds (here CustomResourceDefinition) offline
    // against Kubernetes' own OpenAPI schema, rejecting unknown fields.
    let python = env::required_path(
        "INFRAPILOT_TEST_PYTHON",
        "the Python test tools (kubernetes-validate)",
    );
    let tool = python.parent().unwrap().join("kubernetes-validate");
    let committed: Vec<PathBuf> =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../crds"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".infrapilot.io.yaml"))
            .collect();
    assert_eq!(committed.len(), 6);
    let check = tokio::process::Command::new(tool)
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .arg(dir.join("crds.yaml"))
        .args(&committed)
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "kubernetes-validate rejected the CRDs: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
