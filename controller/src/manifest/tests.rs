use super::*;

fn one(yaml: &str) -> Outcome {
    let mut outcomes = read_str("m.yaml", yaml);
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes.remove(0)
}

fn problems(yaml: &str) -> Vec<String> {
    match one(yaml) {
        Outcome::Invalid(problems) => problems.iter().map(ToString::to_string).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

const PROXY: &str = "apiVersion: infrapilot.io/v1alpha1
kind: Proxy
metadata:
  name: web
spec:
  hosts:
    - app.example.com
  upstream:
    name: web-1
    port: 8080
";

#[test]
fn a_valid_proxy_is_read_into_the_default_namespace() {
    let Outcome::Valid(manifest) = one(PROXY) else {
        panic!()
    };
    assert_eq!(
        (manifest.name.as_str(), manifest.namespace.as_deref()),
        ("web", Some("default"))
    );
    let Object::Custom { kind, object } = manifest.object else {
        panic!()
    };
    assert_eq!(kind, Kind::Proxy);
    assert_eq!(object.value()["metadata"]["namespace"], "default");
}

#[test]
fn a_bad_hostname_is_reported_with_line_column_field_and_reason() {
    let yaml = PROXY.replace("app.example.com", "App_Example");
    assert_eq!(
        problems(&yaml),
        [
            "m.yaml:7:7: spec.hosts[0]: \"App_Example\" must be a lower-case DNS name or wildcard such as *.example.com"
        ]
    );
}

#[test]
fn an_unknown_field_is_reported_at_its_key() {
    let yaml = PROXY.replace("    port: 8080", "    port: 8080\n    prot: 80");
    assert_eq!(
        problems(&yaml),
        ["m.yaml:11:5: spec.upstream.prot: unknown field \"prot\""]
    );
}

#[test]
fn cel_rules_are_enforced_without_an_api_server() {
    let yaml = PROXY.replace(
        "    name: web-1\n",
        "    name: web-1\n    url: http://10.0.0.1\n",
    );
    let found = problems(&yaml);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("spec.upstream: exactly one of name, selector or url must be set"),
        "{found:?}"
    );
}

#[test]
fn a_wrong_type_names_the_field() {
    let found = problems(&PROXY.replace("port: 8080", "port: eighty"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("m.yaml:10:11: spec.upstream.port: "),
        "{found:?}"
    );
}

#[test]
fn metadata_is_checked_like_the_api_server_does() {
    let found = problems(&PROXY.replace("name: web\n", "name: Web!\n"));
    assert!(
        found[0].starts_with("m.yaml:4:9: metadata.name: \"Web!\" must be"),
        "{found:?}"
    );
    let tenant = "apiVersion: infrapilot.io/v1alpha1\nkind: Tenant\nmetadata:\n  name: acme\n  namespace: x\nspec: {}\n";
    assert_eq!(
        problems(tenant),
        ["m.yaml:5:14: metadata.namespace: this kind is cluster-scoped and takes no namespace"]
    );
}

#[test]
fn other_kinds_are_skipped_and_unknown_kinds_of_ours_are_errors() {
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n";
    assert!(matches!(one(deployment), Outcome::Skipped { ref kind, .. } if kind == "Deployment"));
    let found =
        problems("apiVersion: infrapilot.io/v1alpha1\nkind: Proxie\nmetadata:\n  name: x\n");
    assert!(
        found[0].starts_with("m.yaml:2:7: kind: Proxie is not a kind of infrapilot.io/v1alpha1"),
        "{found:?}"
    );
    let found = problems("apiVersion: infrapilot.io/v1\nkind: Proxy\nmetadata:\n  name: x\n");
    assert!(
        found[0].contains("apiVersion: infrapilot.io/v1 is not served"),
        "{found:?}"
    );
}

#[test]
fn each_document_gets_its_own_outcome() {
    let text = format!("{PROXY}---\nnot: [valid\n");
    let outcomes = read_str("m.yaml", &text);
    // A YAML syntax error makes the whole stream unreadable: it is one problem with a position.
    assert_eq!(outcomes.len(), 1);
    let Outcome::Invalid(problems) = &outcomes[0] else {
        panic!()
    };
    assert!(
        problems[0].reason.starts_with("not valid YAML"),
        "{problems:?}"
    );
    assert!(problems[0].line >= 12, "{problems:?}");

    let text = format!("{PROXY}---\n{}", PROXY.replace("port: 8080", "port: 0"));
    let outcomes = read_str("m.yaml", &text);
    assert!(matches!(outcomes[0], Outcome::Valid(_)));
    let Outcome::Invalid(problems) = &outcomes[1] else {
        panic!()
    };
    assert_eq!(problems[0].line, 21, "{problems:?}");
}

#[test]
fn secrets_fold_string_data_into_data() {
    let yaml = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: smtp\nstringData:\n  password: s3cret\ndata:\n  user: YWxpY2U=\n";
    let Outcome::Valid(manifest) = one(yaml) else {
        panic!()
    };
    let Object::Secret(secret) = manifest.object else {
        panic!()
    };
    let data = secret.data.unwrap();
    assert_eq!(data["password"].0, b"s3cret");
    assert_eq!(data["user"].0, b"alice");
}
