//! Proxies end to end in standalone mode: the real binary runs the edge from the nginx test
//! image in front of app containers, and requests go through it over HTTP.

use std::time::Duration;

use infrapilot_e2e::docker::{ContainerSpec, TestDocker, images};
use infrapilot_e2e::edge::{TestEdge, free_port};
use infrapilot_e2e::operator::Operator;
use infrapilot_e2e::pebble::Pebble;
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::{env, names};

/// An operator in standalone mode with its edge.
pub(crate) struct Setup {
    pub(crate) docker: TestDocker,
    pub(crate) operator: Operator,
    pub(crate) edge: TestEdge,
}

pub(crate) async fn setup(test: &str) -> Setup {
    setup_with(test, None).await
}

/// [`setup`] with the edge's plain HTTP on `http`.
async fn setup_with(test: &str, http: Option<u16>) -> Setup {
    let docker = TestDocker::new(test).await;
    let edge = match http {
        Some(port) => TestEdge::with_http_port(&docker, port),
        None => TestEdge::new(&docker),
    };
    let dir = env::test_dir(&names::unique(test));
    std::fs::create_dir_all(dir.join("manifests")).expect("the manifests directory");
    let operator = start(&dir, &edge);
    Setup {
        docker,
        operator,
        edge,
    }
}

impl Setup {
    pub(crate) fn write(&self, file: &str, text: &str) {
        let dir = self.operator.manifests();
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("writing a manifest");
        std::fs::rename(tmp, dir.join(file)).expect("renaming a manifest into place");
    }

    async fn get(&self, host: &str) -> Result<(u16, String), String> {
        self.edge.get(host).await
    }

    async fn wait_for(&self, host: &str, status: u16, body: &str) {
        self.edge
            .wait_for(host, status, body, || self.operator.log())
            .await;
    }

    /// Removes the edge container as a person would by hand (`docker rm -f`).
    async fn remove_edge(&self) {
        let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
            .force(true)
            .build();
        self.docker
            .client()
            .remove_container(&self.edge.name, Some(options))
            .await
            .expect("removing the edge");
    }

    /// The networks the edge container is on.
    async fn edge_networks(&self) -> Vec<String> {
        let edge = self
            .docker
            .client()
            .inspect_container(&self.edge.name, None)
            .await
            .expect("the edge exists");
        edge.network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default()
            .into_keys()
            .collect()
    }

    pub(crate) async fn ready(&self, name: &str, status: &str) -> serde_json::Value {
        self.operator
            .wait_for_condition("proxy", name, "Ready", status)
            .await
    }
}

/// Waits until the operator's log has `needle`.
async fn wait_for_log(operator: &Operator, needle: &str) {
    eventually(
        &format!("{needle:?} in the log"),
        Duration::from_secs(30),
        || async {
            let log = operator.log();
            if log.contains(needle) {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;
}

/// Starts the operator in standalone mode in `dir` with `edge` (again, after it stopped or
/// was killed).
fn start(dir: &std::path::Path, edge: &TestEdge) -> Operator {
    let mut args = vec![
        "run".to_owned(),
        "--manifests".to_owned(),
        "manifests".to_owned(),
        // For the reconcile counts in /metrics.
        "--probe-address".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    args.extend(edge.args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Operator::start(dir, &args).expect("the operator starts")
}

/// Waits until `operator` finished `count` Proxy reconciles: what a restarted operator does
/// to a Proxy is done by then.
async fn wait_for_proxy_reconciles(operator: &Operator, count: u64) {
    eventually(
        &format!("{count} Proxy reconciles"),
        Duration::from_secs(30),
        || async {
            match operator.reconciles("proxy").await? {
                done if done >= count => Ok(()),
                done => Err(format!("{done} so far")),
            }
        },
    )
    .await;
}

pub(crate) fn proxy(name: &str, host: &str, upstream: &str, extra: &str) -> String {
    format!(
        "apiVersion: infrapilot.io/v1alpha1\nkind: Proxy\nmetadata:\n  name: {name}\nspec:\n  \
         hosts: [{host}]\n  upstream:\n{upstream}{extra}"
    )
}

pub(crate) fn by_name(container: &str) -> String {
    format!("    name: {container}\n    port: 8080\n")
}

#[tokio::test]
async fn requests_reach_the_right_container_by_host_and_a_bad_proxy_breaks_nothing() {
    let s = setup("proxy-route").await;
    let network = s.docker.network("shop").await.unwrap();
    let shop = s
        .docker
        .run(ContainerSpec::new(images::APP).network(&network))
        .await
        .unwrap();
    let blog = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();

    s.write(
        "shop.yaml",
        &proxy("shop", "shop.example.test", &by_name(&shop.name), ""),
    );
    s.write(
        "blog.yaml",
        &proxy("blog", "blog.example.test", &by_name(&blog.name), ""),
    );
    let status = s.ready("shop", "True").await;
    assert_eq!(status["status"]["networks"][0], network.as_str());
    s.ready("blog", "True").await;
    s.wait_for("shop.example.test", 200, &shop.name).await;
    s.wait_for("blog.example.test", 200, &blog.name).await;
    // A host no Proxy serves gets the edge's 404.
    assert_eq!(s.get("nobody.example.test").await.unwrap().0, 404);

    // A Proxy that fails the grammar is refused with its field; the others keep serving.
    s.write(
        "bad.yaml",
        &proxy(
            "bad",
            "bad.example.test",
            &by_name(&shop.name),
            "  headers:\n    response:\n      X-Injected: \"$host\"\n",
        ),
    );
    let bad = s.ready("bad", "False").await;
    let message = bad["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("spec.headers.response"), "{message}");
    s.wait_for("shop.example.test", 200, &shop.name).await;

    // The edge joined the shop's network for it, and never served the bad one.
    let networks = s.edge_networks().await;
    assert!(networks.contains(&network), "{networks:?}");
    assert_eq!(s.get("bad.example.test").await.unwrap().0, 404);

    // Deleting a Proxy removes its site and leaves the network it alone needed.
    std::fs::remove_file(s.operator.manifests().join("shop.yaml")).unwrap();
    s.wait_for("shop.example.test", 404, "").await;
    eventually(
        "the edge to leave the shop network",
        Duration::from_secs(20),
        || async {
            let networks = s.edge_networks().await;
            if networks.contains(&network) {
                Err(format!("{networks:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    s.wait_for("blog.example.test", 200, &blog.name).await;
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn traffic_options_answer_403_429_and_503() {
    let s = setup("proxy-options").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    s.write(
        "denied.yaml",
        &proxy(
            "denied",
            "denied.example.test",
            &by_name(&app.name),
            "  access:\n    deny: [127.0.0.0/8, 172.16.0.0/12]\n",
        ),
    );
    s.write(
        "limited.yaml",
        &proxy(
            "limited",
            "limited.example.test",
            &by_name(&app.name),
            "  rateLimit:\n    average: 1\n    period: 1m\n    burst: 0\n",
        ),
    );
    s.write(
        "paused.yaml",
        &proxy(
            "paused",
            "paused.example.test",
            &by_name(&app.name),
            "  suspend: true\n",
        ),
    );
    for name in ["denied", "limited", "paused"] {
        s.ready(name, "True").await;
    }
    s.wait_for("denied.example.test", 403, "").await;
    s.wait_for("paused.example.test", 503, "maintenance").await;
    // One request a minute: the first passes, the next are refused. (Right after a reload,
    // nginx's previous workers may still answer a request or two with the configuration
    // before: wait rather than expect the very next answer.)
    s.wait_for("limited.example.test", 200, &app.name).await;
    s.wait_for("limited.example.test", 429, "").await;
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_container_on_the_host_network_is_refused_with_the_reason() {
    let s = setup("proxy-host").await;
    let port = free_port().to_string();
    let host = s
        .docker
        .run(
            ContainerSpec::new(images::APP)
                .network("host")
                .env("PORT", &port),
        )
        .await
        .unwrap();
    s.write(
        "host.yaml",
        &proxy("host", "host.example.test", &by_name(&host.name), ""),
    );
    let refused = s.ready("host", "False").await;
    let condition = &refused["status"]["conditions"][0];
    assert_eq!(condition["reason"], "NetworkRefused", "{refused}");
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"host\""),
        "{refused}"
    );
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn the_edge_removed_by_hand_is_recreated_serving_every_proxy() {
    let s = setup("proxy-recreate").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    s.write(
        "one.yaml",
        &proxy("one", "one.example.test", &by_name(&app.name), ""),
    );
    s.write(
        "two.yaml",
        &proxy("two", "two.example.test", &by_name(&app.name), ""),
    );
    s.ready("one", "True").await;
    s.ready("two", "True").await;
    s.wait_for("one.example.test", 200, &app.name).await;

    s.remove_edge().await;
    s.wait_for("one.example.test", 200, &app.name).await;
    s.wait_for("two.example.test", 200, &app.name).await;
    assert!(
        s.operator.log().contains("created the edge"),
        "{}",
        s.operator.log()
    );
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_url_upstream_is_resolved_per_request_so_a_dead_name_never_stops_the_edge() {
    let s = setup("proxy-dns").await;
    let network = s.docker.network("dns").await.unwrap();
    let app = s
        .docker
        .run(ContainerSpec::new(images::APP).network(&network))
        .await
        .unwrap();
    // "by-name" puts the edge on the app's network, where Docker's DNS knows the app by its
    // container name; "by-url" reaches the same app through that name, resolved by nginx.
    s.write(
        "by-name.yaml",
        &proxy("by-name", "by-name.example.test", &by_name(&app.name), ""),
    );
    s.ready("by-name", "True").await;
    s.write(
        "by-url.yaml",
        &proxy(
            "by-url",
            "by-url.example.test",
            &format!("    url: http://{}:8080/\n", app.name),
            "",
        ),
    );
    s.ready("by-url", "True").await;
    s.wait_for("by-url.example.test", 200, &app.name).await;

    // A name that never resolves: it loads (no `host not found` at nginx -t) and its requests
    // get 502, while the others keep serving and changing.
    s.write(
        "dead.yaml",
        &proxy(
            "dead",
            "dead.example.test",
            "    url: http://no-such-host.invalid:8080\n",
            "",
        ),
    );
    let refused = s.ready("dead", "False").await;
    assert_eq!(
        refused["status"]["conditions"][0]["reason"], "NameNotResolved",
        "{refused}"
    );
    s.wait_for("dead.example.test", 502, "").await;
    s.write(
        "later.yaml",
        &proxy("later", "later.example.test", &by_name(&app.name), ""),
    );
    s.ready("later", "True").await;
    s.wait_for("later.example.test", 200, &app.name).await;

    // The edge removed by hand comes back with the dead name in it and serves the others,
    // the URL one included.
    s.remove_edge().await;
    s.wait_for("later.example.test", 200, &app.name).await;
    s.wait_for("by-url.example.test", 200, &app.name).await;
    s.wait_for("dead.example.test", 502, "").await;
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_quoted_header_value_reaches_clients_as_data_never_as_configuration() {
    let s = setup("proxy-injection").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    // Quotes, semicolons, braces and # are data inside a quoted nginx string.
    let payload = r#"x"; return 200 "owned"; } server { listen 81; # {"#;
    let quoted = serde_json::to_string(payload).unwrap();
    s.write(
        "inject.yaml",
        &proxy(
            "inject",
            "inject.example.test",
            &by_name(&app.name),
            &format!("  headers:\n    response:\n      X-Note: {quoted}\n"),
        ),
    );
    s.ready("inject", "True").await;
    s.wait_for("inject.example.test", 200, &app.name).await;
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/", s.edge.http))
        .header("Host", "inject.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-note"].to_str().unwrap(), payload);
    assert!(response.text().await.unwrap().contains(&app.name));
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_rewrites_and_reloads_nothing_that_is_served() {
    let s = setup("proxy-restart").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    s.write(
        "one.yaml",
        &proxy("one", "one.example.test", &by_name(&app.name), ""),
    );
    s.ready("one", "True").await;
    s.wait_for("one.example.test", 200, &app.name).await;
    // Every audit record (the edge's own as well as the Proxy's) and nginx's own reloads.
    let audited = |dir: std::path::PathBuf| async move {
        let output = infrapilot_e2e::operator::cli(&dir, &["audit", "list"])
            .await
            .unwrap();
        String::from_utf8_lossy(&output.stdout).lines().count()
    };
    let before = audited(s.operator.dir().to_owned()).await;
    assert!(before >= 1, "the first apply is audited");
    let reloads = s.edge.reloads(&s.docker).await.unwrap();
    assert!(
        reloads >= 1,
        "the first apply reloaded nginx, and its log shows it"
    );

    let dir = s.operator.dir().to_owned();
    s.operator.stop().await.unwrap();
    let again = start(&dir, &s.edge);
    // Once the restarted operator reconciled the Proxy, whatever it would rewrite or reload
    // is done.
    wait_for_proxy_reconciles(&again, 1).await;
    assert!(
        again.log().contains("found the running edge"),
        "{}",
        again.log()
    );
    s.edge
        .wait_for("one.example.test", 200, &app.name, || again.log())
        .await;
    assert_eq!(audited(dir.clone()).await, before, "{}", again.log());
    assert_eq!(
        s.edge.reloads(&s.docker).await.unwrap(),
        reloads,
        "nginx reloaded again: {}",
        again.log()
    );
    // Both runs log to the same file: the edge was created once, by the first.
    assert_eq!(
        again.log().matches("created the edge").count(),
        1,
        "{}",
        again.log()
    );

    // The same count sees a reload when there is one: a changed Proxy.
    let changed = proxy(
        "one",
        "one.example.test",
        &by_name(&app.name),
        "  clientMaxBodySize: 2M\n",
    );
    std::fs::write(dir.join("manifests/.one.yaml.tmp"), changed).unwrap();
    std::fs::rename(
        dir.join("manifests/.one.yaml.tmp"),
        dir.join("manifests/one.yaml"),
    )
    .unwrap();
    eventually(
        "a reload for the change",
        Duration::from_secs(20),
        || async {
            match s.edge.reloads(&s.docker).await? {
                now if now > reloads => Ok(()),
                now => Err(format!("{now} reloads")),
            }
        },
    )
    .await;
    again.stop().await.unwrap();
}

/// A CA and a certificate it signed for `host`, made with openssl: (chain PEM, key PEM, CA PEM).
pub(crate) fn certificate_for(dir: &std::path::Path, host: &str) -> (String, String, String) {
    certificate_for_days(dir, host, "30")
}

/// [`certificate_for`] with a leaf valid for `days` (a negative number gives one that expired
/// that many days ago: OpenSSL 3 sets notAfter before notBefore).
pub(crate) fn certificate_for_days(
    dir: &std::path::Path,
    host: &str,
    days: &str,
) -> (String, String, String) {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (tests/env/provision.sh installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    std::fs::create_dir_all(dir).expect("the PKI directory");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=InfraPilot Test CA",
            "-days",
            "2",
        ],
    ]
    .concat());
    run(&[
        &["req"],
        &ec[..],
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            &format!("/CN={host}"),
        ],
    ]
    .concat());
    std::fs::write(dir.join("san.ext"), format!("subjectAltName=DNS:{host}\n"))
        .expect("the extensions file");
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.crt",
        "-days",
        days,
        "-extfile",
        "san.ext",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("an openssl output");
    (
        read("leaf.crt") + &read("ca.crt"),
        read("leaf.key"),
        read("ca.crt"),
    )
}

/// A client for `host` through the edge, trusting `ca_pem`, following no redirect.
fn https_client(edge: &TestEdge, host: &str, ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("a PEM CA"))
        .resolve(
            host,
            format!("127.0.0.1:{}", edge.https)
                .parse()
                .expect("an address"),
        )
        .redirect(reqwest::redirect::Policy::none())
}

/// A GET over HTTPS to `host` through the edge, trusting `ca_pem`, retried until it answers.
async fn https_get(edge: &TestEdge, host: &str, ca_pem: &str) -> reqwest::Response {
    let client = https_client(edge, host, ca_pem)
        .build()
        .expect("an HTTPS client");
    eventually(
        &format!("HTTPS for {host}"),
        Duration::from_secs(20),
        || async {
            client
                .get(format!("https://{host}:{}/", edge.https))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))
        },
    )
    .await
}

fn indented(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// A `kubernetes.io/tls` Secret manifest holding `chain` and `key`.
pub(crate) fn tls_secret(name: &str, chain: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indented(chain),
        indented(key)
    )
}

#[tokio::test]
async fn a_certificate_from_a_secret_is_served_over_https_with_a_grade() {
    let s = setup("proxy-tls").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let host = "secure.example.test";
    let (chain, key, ca) = certificate_for(&s.operator.dir().join("pki"), host);
    s.write("secret.yaml", &tls_secret("secure-tls", &chain, &key));
    s.write(
        "secure.yaml",
        &proxy(
            "secure",
            host,
            &by_name(&app.name),
            "  tls:\n    secretName: secure-tls\n    hsts: {maxAge: 365d}\n",
        ),
    );
    let ready = s.ready("secure", "True").await;
    // Intermediate (the default) keeps TLS 1.2 for older clients: A, with the reason.
    assert_eq!(ready["status"]["tlsGrade"]["grade"], "A", "{ready}");
    assert_eq!(
        ready["status"]["tlsGrade"]["reasons"][0],
        "TLS 1.2 is accepted (policy Intermediate; Modern serves TLS 1.3 only)",
        "{ready}"
    );
    assert!(
        ready["status"]["certificate"]["notAfter"].is_string(),
        "{ready}"
    );

    // HTTPS with the CA trusted answers from the app, with HSTS; plain HTTP redirects.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve(host, format!("127.0.0.1:{}", s.edge.https).parse().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = eventually("HTTPS to answer", Duration::from_secs(20), || async {
        client
            .get(format!("https://{host}:{}/", s.edge.https))
            .send()
            .await
            .map_err(|e| format!("{e:?}"))
    })
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["strict-transport-security"]
            .to_str()
            .unwrap(),
        "max-age=31536000"
    );
    assert!(response.text().await.unwrap().contains(&app.name));
    s.wait_for(host, 301, "").await;

    // A key that does not belong to the certificate is refused before nginx sees it, naming
    // the Secret; HTTPS keeps serving the last good pair.
    let (_, other_key, _) = certificate_for(&s.operator.dir().join("pki-other"), host);
    s.write("secret.yaml", &tls_secret("secure-tls", &chain, &other_key));
    let refused = s.ready("secure", "False").await;
    let condition = &refused["status"]["conditions"][0];
    assert_eq!(condition["reason"], "InvalidCertificate", "{refused}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("Secret default/secure-tls: tls.key does not belong")),
        "{refused}"
    );
    let again = client
        .get(format!("https://{host}:{}/", s.edge.https))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    s.operator.stop().await.unwrap();
}

/// A GET over HTTPS to `host` through the edge, trusting `ca_pem`, with TLS no newer than
/// `max` (or any): the error when the handshake fails.
async fn https_with(
    edge: &TestEdge,
    host: &str,
    ca_pem: &str,
    max: Option<reqwest::tls::Version>,
) -> Result<u16, String> {
    let mut builder = https_client(edge, host, ca_pem).timeout(Duration::from_secs(5));
    if let Some(max) = max {
        builder = builder.max_tls_version(max);
    }
    let client = builder.build().expect("an HTTPS client");
    client
        .get(format!("https://{host}:{}/", edge.https))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn the_tls_policy_decides_the_protocols_nginx_serves() {
    let s = setup("proxy-tls-policy").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let mut cas = Vec::new();
    for (name, host, policy) in [
        ("modern", "modern.example.test", "Modern"),
        ("older", "older.example.test", "Intermediate"),
    ] {
        let (chain, key, ca) = certificate_for(&s.operator.dir().join(name), host);
        s.write(
            &format!("{name}-secret.yaml"),
            &tls_secret(&format!("{name}-tls"), &chain, &key),
        );
        s.write(
            &format!("{name}.yaml"),
            &proxy(
                name,
                host,
                &by_name(&app.name),
                &format!("  tls:\n    secretName: {name}-tls\n    policy: {policy}\n"),
            ),
        );
        cas.push((host, ca));
    }
    let modern = s.ready("modern", "True").await;
    let older = s.ready("older", "True").await;
    let reasons = |status: &serde_json::Value| status["status"]["tlsGrade"]["reasons"].to_string();
    assert!(!reasons(&modern).contains("TLS 1.2"), "{modern}");
    assert!(reasons(&older).contains("TLS 1.2 is accepted"), "{older}");
    let [(modern_host, modern_ca), (older_host, older_ca)] = &cas[..] else {
        unreachable!()
    };
    let tls12 = Some(reqwest::tls::Version::TLS_1_2);
    // Served at all (301 to HTTPS is plain HTTP's answer; HTTPS answers from the app).
    eventually(
        "both served over HTTPS",
        Duration::from_secs(20),
        || async {
            match (
                https_with(&s.edge, modern_host, modern_ca, None).await,
                https_with(&s.edge, older_host, older_ca, None).await,
            ) {
                (Ok(200), Ok(200)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // The same TLS 1.2 client that the Intermediate Proxy accepts is refused by the Modern one.
    assert_eq!(
        https_with(&s.edge, older_host, older_ca, tls12).await,
        Ok(200),
        "Intermediate accepts TLS 1.2"
    );
    let refused = https_with(&s.edge, modern_host, modern_ca, tls12).await;
    assert!(refused.is_err(), "Modern refuses TLS 1.2: {refused:?}");
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_mismatched_key_and_a_long_host_in_one_batch_fail_no_other_proxy() {
    let s = setup("proxy-batch-faults").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    // 126 characters: more than nginx's default server-name hash bucket holds.
    let long = format!("{}.{}.test", "a".repeat(60), "b".repeat(60));
    assert_eq!(long.len(), 126);
    let keyed = "keyed.example.test";
    let (chain, key, _) = certificate_for(&s.operator.dir().join("pki"), keyed);
    let (_, other_key, _) = certificate_for(&s.operator.dir().join("pki-other"), keyed);
    // All at once, so that they meet in one batch of the edge.
    let dir = s.operator.manifests();
    let staged = s.operator.dir().join("staged");
    std::fs::create_dir_all(&staged).expect("a staging directory");
    let files = [
        ("secret.yaml", tls_secret("keyed-tls", &chain, &other_key)),
        (
            "keyed.yaml",
            proxy(
                "keyed",
                keyed,
                &by_name(&app.name),
                "  tls:\n    secretName: keyed-tls\n",
            ),
        ),
        ("long.yaml", proxy("long", &long, &by_name(&app.name), "")),
        (
            "healthy.yaml",
            proxy("healthy", "healthy.example.test", &by_name(&app.name), ""),
        ),
    ];
    for (file, text) in &files {
        std::fs::write(staged.join(file), text).expect("staging a manifest");
    }
    for (file, _) in &files {
        std::fs::rename(staged.join(file), dir.join(file)).expect("moving a manifest in");
    }

    let refused = s.ready("keyed", "False").await;
    let condition = &refused["status"]["conditions"][0];
    assert_eq!(condition["reason"], "InvalidCertificate", "{refused}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("Secret default/keyed-tls: tls.key does not belong")),
        "{refused}"
    );
    s.ready("long", "True").await;
    s.ready("healthy", "True").await;
    s.wait_for("healthy.example.test", 200, &app.name).await;
    s.wait_for(&long, 200, &app.name).await;

    // The right key is picked up.
    s.write("secret.yaml", &tls_secret("keyed-tls", &chain, &key));
    s.ready("keyed", "True").await;
    s.wait_for(keyed, 301, "").await;
    s.operator.stop().await.unwrap();
}

/// A TLS client that takes any certificate, so that only a refused handshake fails it: without
/// the default server on 443, an unknown name got the first TLS Proxy's certificate and site.
fn any_certificate(host: &str, edge: &TestEdge) -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve(
            host,
            format!("127.0.0.1:{}", edge.https)
                .parse()
                .expect("an address"),
        )
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTPS client")
}

#[tokio::test]
async fn names_no_proxy_serves_get_no_site_on_443_or_80() {
    let s = setup("proxy-default-servers").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let host = "owned.example.test";
    let (chain, key, _) = certificate_for(&s.operator.dir().join("pki"), host);
    s.write("secret.yaml", &tls_secret("owned-tls", &chain, &key));
    s.write(
        "owned.yaml",
        &proxy(
            "owned",
            host,
            &by_name(&app.name),
            "  tls:\n    secretName: owned-tls\n",
        ),
    );
    s.ready("owned", "True").await;
    // The Proxy's own name is served over TLS, by the same client the unknown name gets.
    let served = eventually(
        "HTTPS for the owned name",
        Duration::from_secs(20),
        || async {
            any_certificate(host, &s.edge)
                .get(format!("https://{host}:{}/", s.edge.https))
                .send()
                .await
                .map_err(|e| format!("{e:?}"))
        },
    )
    .await;
    assert_eq!(served.status(), 200);
    assert!(served.text().await.unwrap().contains(&app.name));

    // An unknown SNI: the handshake is refused, so no certificate and no site answer.
    let unknown = "unknown.example.test";
    let refused = any_certificate(unknown, &s.edge)
        .get(format!("https://{unknown}:{}/", s.edge.https))
        .send()
        .await;
    let error = refused.expect_err("an unknown name on 443 must not be answered");
    assert!(error.is_connect(), "{error:?}");
    // An unknown Host on 80 gets 404 and nothing of the site.
    let (status, body) = s.edge.get(unknown).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains(&app.name), "{body}");
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_container_moving_network_is_followed() {
    let s = setup("proxy-follow").await;
    let first = s.docker.network("first").await.unwrap();
    let second = s.docker.network("second").await.unwrap();
    let app = s
        .docker
        .run(ContainerSpec::new(images::APP).network(&first))
        .await
        .unwrap();
    s.write(
        "moving.yaml",
        &proxy("moving", "moving.example.test", &by_name(&app.name), ""),
    );
    s.ready("moving", "True").await;
    s.wait_for("moving.example.test", 200, &app.name).await;

    // The container leaves its network for another: Docker's events bring the Proxy back,
    // the edge follows it there and leaves the old network.
    let docker = s.docker.client();
    docker
        .connect_network(
            &second,
            bollard::models::NetworkConnectRequest {
                container: app.id.clone(),
                endpoint_config: None,
            },
        )
        .await
        .unwrap();
    docker
        .disconnect_network(
            &first,
            bollard::models::NetworkDisconnectRequest {
                container: app.id.clone(),
                force: Some(true),
            },
        )
        .await
        .unwrap();
    eventually(
        "the Proxy to follow its container",
        Duration::from_secs(20),
        || async {
            let object = s
                .operator
                .get("proxy", "moving")
                .await
                .map_err(|e| e.to_string())?;
            if object["status"]["networks"] == serde_json::json!([second]) {
                Ok(())
            } else {
                Err(format!("{}", object["status"]))
            }
        },
    )
    .await;
    s.wait_for("moving.example.test", 200, &app.name).await;
    eventually(
        "the edge to leave the old network",
        Duration::from_secs(20),
        || async {
            let networks = s.edge_networks().await;
            if networks.contains(&second) && !networks.contains(&first) {
                Ok(())
            } else {
                Err(format!("{networks:?}"))
            }
        },
    )
    .await;
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn an_operator_killed_half_way_converges_without_repeating_side_effects() {
    let mut s = setup("proxy-killed").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let docs: Vec<String> = (0..20)
        .map(|i| {
            proxy(
                &format!("p{i}"),
                &format!("p{i}.example.test"),
                &by_name(&app.name),
                "",
            )
        })
        .collect();
    s.write("many.yaml", &docs.join("---\n"));
    // Killed (no chance to finish anything) once the first reload went out.
    wait_for_log(&s.operator, "reloaded nginx").await;
    s.operator
        .process()
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let _ = s.operator.process().wait(Duration::from_secs(10)).await;

    let dir = s.operator.dir().to_owned();
    let again = start(&dir, &s.edge);
    for i in 0..20 {
        again
            .wait_for_condition("proxy", &format!("p{i}"), "Ready", "True")
            .await;
        s.edge
            .wait_for(&format!("p{i}.example.test"), 200, &app.name, || {
                again.log()
            })
            .await;
    }
    // One edge.
    assert_eq!(
        again.log().matches("created the edge").count(),
        1,
        "{}",
        again.log()
    );
    let export = infrapilot_e2e::operator::cli(&dir, &["audit", "export", "--format", "json"])
        .await
        .unwrap();
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&export.stdout).expect("the export is a JSON array");
    // No configuration applied twice. One killed between writing files and recording them
    // was loaded by the restarted operator's single resynchronising reload instead.
    let resynced = records.iter().any(|r| {
        r["object"]["kind"] == "Edge"
            && r["action"] == "nginx.reload"
            && r["target"]
                .as_str()
                .is_some_and(|t| t.ends_with("files on disk it had not loaded"))
    });
    for i in 0..20 {
        let applied = records
            .iter()
            .filter(|r| {
                r["object"]["name"] == format!("p{i}")
                    && r["action"] == "nginx.config.apply"
                    && r["outcome"] == "Success"
            })
            .count();
        assert!(applied <= 1, "p{i} applied {applied} times");
        assert!(
            applied == 1 || resynced,
            "p{i} was never applied nor resynchronised"
        );
    }
    again.stop().await.unwrap();
}

#[tokio::test]
async fn an_acme_certificate_is_issued_by_pebble_and_served() {
    let pebble = Pebble::from_env();
    let s = setup_with("proxy-acme", Some(pebble.http01_port)).await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let host = "acme.example.test";
    let ca = String::from_utf8(pebble.listener_ca_pem.clone()).unwrap();
    s.write(
        "acme.yaml",
        &proxy(
            "acme",
            host,
            &by_name(&app.name),
            &format!(
                "  tls:\n    acme:\n      email: ops@example.test\n      server: {}\n      caBundle: |\n{}",
                pebble.directory,
                ca.lines().map(|l| format!("        {l}\n")).collect::<String>()
            ),
        ),
    );
    let ready = s.ready("acme", "True").await;
    let certificate = &ready["status"]["certificate"];
    assert!(certificate["notAfter"].is_string(), "{ready}");
    // What nginx serves is the certificate the status describes.
    let not_after = |status: &serde_json::Value| -> jiff::Timestamp {
        status["status"]["certificate"]["notAfter"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("a notAfter in {status}"))
    };
    // (A reload takes effect as nginx's new workers start: asked until they answer.)
    let issued_not_after = not_after(&ready);
    eventually(
        "the issued certificate to be served",
        Duration::from_secs(10),
        || async {
            match s.edge.served_not_after(host).await? {
                served if served == issued_not_after => Ok(()),
                served => Err(format!("served {served}, status {issued_not_after}")),
            }
        },
    )
    .await;
    assert!(certificate["renewalTime"].is_string(), "{ready}");
    assert_eq!(certificate["failedIssuanceAttempts"], 0, "{ready}");

    // Served over HTTPS with pebble's chain; plain HTTP redirects.
    let root = pebble.issuer_root_pem().await.unwrap();
    let response = https_get(&s.edge, host, &root).await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains(&app.name));
    s.wait_for(host, 301, "").await;

    // A restart issues nothing again: the edge keeps the certificate.
    let first_not_after = certificate["notAfter"].clone();
    let dir = s.operator.dir().to_owned();
    s.operator.stop().await.unwrap();
    let again = start(&dir, &s.edge);
    // An issuance happens within the reconcile: once it finished, one would have happened.
    wait_for_proxy_reconciles(&again, 1).await;
    assert!(
        again.log().contains("found the running edge"),
        "{}",
        again.log()
    );
    let export = infrapilot_e2e::operator::cli(&dir, &["audit", "export", "--format", "json"])
        .await
        .unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_slice(&export.stdout).unwrap();
    let issued = records
        .iter()
        .filter(|r| r["action"] == "certificate.issue" && r["outcome"] == "Success")
        .count();
    assert_eq!(issued, 1, "{records:?}");

    // Two thirds into its lifetime (pebble's test certificates live 45 s) it is renewed, and
    // the new one is served.
    let renewed = eventually(
        "the certificate to be renewed",
        Duration::from_secs(50),
        || async {
            let object = again
                .get("proxy", "acme")
                .await
                .map_err(|e| e.to_string())?;
            let not_after = &object["status"]["certificate"]["notAfter"];
            if not_after.is_string() && *not_after != first_not_after {
                Ok(object)
            } else {
                Err(format!("{}", object["status"]))
            }
        },
    )
    .await;
    assert_eq!(
        renewed["status"]["certificate"]["failedIssuanceAttempts"], 0,
        "{renewed}"
    );
    assert_eq!(https_get(&s.edge, host, &root).await.status(), 200);
    // The renewed certificate reached nginx: the handshake shows the new notAfter.
    let renewed_not_after = not_after(&renewed);
    eventually(
        "the renewed certificate to be served",
        Duration::from_secs(10),
        || async {
            match s.edge.served_not_after(host).await? {
                served if served == renewed_not_after => Ok(()),
                served => Err(format!("served {served}, status {renewed_not_after}")),
            }
        },
    )
    .await;
    // Renewed by the restarted operator with the account the first one registered (the
    // credentials are kept in the edge).
    assert_eq!(
        again.log().matches("registered an ACME account").count(),
        1,
        "{}",
        again.log()
    );
    again.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_issuance_is_reported_with_its_attempts() {
    let pebble = Pebble::from_env();
    let s = setup("proxy-acme-fail").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    // Without caBundle the ACME server's own certificate is not trusted: issuance fails.
    s.write(
        "failing.yaml",
        &proxy(
            "failing",
            "failing.example.test",
            &by_name(&app.name),
            &format!(
                "  tls:\n    acme:\n      email: ops@example.test\n      server: {}\n",
                pebble.directory
            ),
        ),
    );
    let failed = s.ready("failing", "False").await;
    assert_eq!(
        failed["status"]["conditions"][0]["reason"], "IssuanceFailed",
        "{failed}"
    );
    assert_eq!(
        failed["status"]["certificate"]["failedIssuanceAttempts"], 1,
        "{failed}"
    );
    assert!(
        failed["status"]["certificate"]["lastFailureTime"].is_string(),
        "{failed}"
    );
    // The site is served over plain HTTP meanwhile.
    s.wait_for("failing.example.test", 200, &app.name).await;
    s.operator.stop().await.unwrap();
}

/// A Proxy in `namespace`, as [`proxy`] writes one in `default`.
/// Accepts connections and never answers; counts them.
fn black_hole() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn an_acme_server_that_never_answers_fails_on_its_deadline_and_holds_up_nothing() {
    use std::sync::atomic::Ordering;
    let s = setup("proxy-acme-black-hole").await;
    let app = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let (port, accepted) = black_hole();
    let stuck = |name: &str| {
        proxy(
            name,
            &format!("{name}.example.test"),
            &by_name(&app.name),
            &format!(
                "  tls:\n    acme:\n      email: ops@example.test\n      server: https://127.0.0.1:{port}/dir\n"
            ),
        )
    };
    s.write("stuck.yaml", &stuck("stuck"));
    let in_flight = |n: usize| {
        let accepted = accepted.clone();
        async move {
            eventually(
                "a connection to the black hole",
                Duration::from_secs(30),
                || async {
                    let seen = accepted.load(Ordering::SeqCst);
                    if seen >= n {
                        Ok(())
                    } else {
                        Err(format!("{seen} connections"))
                    }
                },
            )
            .await
        }
    };
    in_flight(1).await;
    // While that issuance waits, a neighbour is created and served.
    s.write(
        "plain.yaml",
        &proxy("plain", "plain.example.test", &by_name(&app.name), ""),
    );
    s.wait_for("plain.example.test", 200, &app.name).await;
    let failed = s.ready("stuck", "False").await;
    let condition = &failed["status"]["conditions"][0];
    assert_eq!(condition["reason"], "IssuanceFailed", "{failed}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.contains("within 10 s")),
        "{failed}"
    );

    // The failed one waits for its backoff; a new Proxy issues at once, and SIGTERM in the
    // middle of its issuance still ends the operator within the request deadline.
    let before = accepted.load(Ordering::SeqCst);
    s.write("stuck2.yaml", &stuck("stuck2"));
    in_flight(before + 1).await;
    s.operator
        .stop_within(Duration::from_secs(15))
        .await
        .unwrap();
}

fn proxy_in(namespace: &str, name: &str, host: &str, container: &str) -> String {
    proxy(name, host, &by_name(container), "").replacen(
        "metadata:\n",
        &format!("metadata:\n  namespace: {namespace}\n"),
        1,
    )
}

/// Waits until the Proxy `namespace/name` has Ready=`status`, within `timeout`.
async fn ready_in(
    s: &Setup,
    namespace: &str,
    name: &str,
    status: &str,
    timeout: Duration,
) -> serde_json::Value {
    let dir = s.operator.dir();
    infrapilot_e2e::wait::wait_for_condition(
        &format!("proxy {namespace}/{name}"),
        "Ready",
        status,
        timeout,
        || async move {
            let args = ["get", "proxy", name, "-n", namespace, "-o", "json"];
            let output = infrapilot_e2e::operator::cli(dir, &args).await?;
            anyhow::ensure!(
                output.status.success(),
                "infrapilot get failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok(serde_json::from_slice(&output.stdout)?)
        },
    )
    .await
}

#[tokio::test]
async fn a_host_claimed_by_two_namespaces_is_served_by_the_older_proxy_until_it_goes() {
    const HOST: &str = "claimed.example.test";
    let s = setup("proxy-claims").await;
    let first = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let second = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let other = s.docker.run(ContainerSpec::new(images::APP)).await.unwrap();
    let wait = Duration::from_secs(30);

    s.write("first.yaml", &proxy_in("team-a", "site", HOST, &first.name));
    ready_in(&s, "team-a", "site", "True", wait).await;
    s.wait_for(HOST, 200, &first.name).await;

    // Another namespace names the same host; a third Proxy next to them another host.
    s.write(
        "second.yaml",
        &proxy_in("team-b", "site", HOST, &second.name),
    );
    s.write(
        "other.yaml",
        &proxy_in("team-b", "other", "other.example.test", &other.name),
    );
    let refused = ready_in(&s, "team-b", "site", "False", wait).await;
    let condition = infrapilot_e2e::wait::condition(&refused, "Ready").unwrap();
    assert_eq!(condition["reason"], "HostConflict", "{refused}");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{HOST} by Proxy team-a/site")),
        "{message}"
    );
    ready_in(&s, "team-b", "other", "True", wait).await;
    s.wait_for("other.example.test", 200, &other.name).await;
    // The holder keeps serving its own app: the second's block never reached nginx.
    for _ in 0..5 {
        let (status, body) = s.get(HOST).await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(&first.name), "{body}");
    }
    // Refused, it is not tried again in a loop: each attempt logs the refusal (so a loop would
    // show), and the next is its recheck, 15 s away (one more may come from the holder).
    let attempts = || {
        s.operator
            .log()
            .lines()
            .filter(|l| {
                l.contains("hosts claimed first by another Proxy") && l.contains("team-b/site")
            })
            .count()
    };
    let seen = attempts();
    assert!(seen >= 1, "the refusal is logged:\n{}", s.operator.log());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        attempts() <= seen + 1,
        "refused {} times in 3 s:\n{}",
        attempts() - seen,
        s.operator.log()
    );

    // The holder goes: its cleanup brings the second back, which takes over.
    std::fs::remove_file(s.operator.manifests().join("first.yaml")).unwrap();
    ready_in(&s, "team-b", "site", "True", wait).await;
    s.wait_for(HOST, 200, &second.name).await;
    s.wait_for("other.example.test", 200, &other.name).await;
    s.operator.stop().await.unwrap();
}

/// An nginx container on `network` answering HTTPS on 8443 with a certificate for its own
/// name from a private CA; returns its name and that CA.
async fn https_upstream(s: &Setup, network: &str) -> (String, String) {
    let name = s.docker.unique_name("secure-upstream");
    let dir = s.operator.dir().join("upstream-pki");
    let (chain, key, ca) = certificate_for(&dir, &name);
    let conf = dir.join("conf.d");
    std::fs::create_dir_all(&conf).expect("the upstream's files and container");
    std::fs::write(conf.join("leaf.crt"), chain).expect("the upstream's files and container");
    std::fs::write(conf.join("leaf.key"), key).expect("the upstream's files and container");
    std::fs::write(
        conf.join("default.conf"),
        "server {\n    listen 8443 ssl;\n    ssl_certificate /etc/nginx/conf.d/leaf.crt;\n    \
         ssl_certificate_key /etc/nginx/conf.d/leaf.key;\n    \
         location / {\n        return 200 \"secure upstream $ssl_server_name\\n\";\n    }\n}\n",
    )
    .expect("the upstream's files and container");
    s.docker
        .run(
            ContainerSpec::new(images::NGINX)
                .name(&name)
                .network(network)
                .bind(&conf, "/etc/nginx/conf.d:ro"),
        )
        .await
        .expect("the upstream's files and container");
    (name, ca)
}

#[tokio::test]
async fn an_https_upstream_is_verified_and_refused_unless_its_ca_is_given() {
    let s = setup("proxy-upstream-tls").await;
    let network = s.docker.network("upstream-tls").await.unwrap();
    let app = s
        .docker
        .run(ContainerSpec::new(images::APP).network(&network))
        .await
        .unwrap();
    let (upstream, ca) = https_upstream(&s, &network).await;
    // Puts the edge on the network, where Docker's DNS knows the upstream by its name.
    s.write(
        "anchor.yaml",
        &proxy("anchor", "anchor.example.test", &by_name(&app.name), ""),
    );
    s.ready("anchor", "True").await;
    let url = format!("    url: https://{upstream}:8443/\n");

    // By default the system CAs must vouch for it: they do not, so its requests get 502.
    s.write(
        "system.yaml",
        &proxy("system", "system.example.test", &url, ""),
    );
    let ready = s.ready("system", "True").await;
    assert_eq!(
        ready["status"]["upstream"]["verification"], "SystemCAs",
        "{ready}"
    );
    s.wait_for("system.example.test", 502, "").await;

    // With its CA given, the same upstream answers, verified for its name (sent as SNI).
    s.write(
        "trusted.yaml",
        &proxy(
            "trusted",
            "trusted.example.test",
            &format!(
                "{url}    tls:\n      caBundle: |\n{}",
                indented(&indented(&indented(&ca)))
            ),
            "",
        ),
    );
    let ready = s.ready("trusted", "True").await;
    assert_eq!(
        ready["status"]["upstream"]["verification"], "CABundle",
        "{ready}"
    );
    s.wait_for(
        "trusted.example.test",
        200,
        &format!("secure upstream {upstream}"),
    )
    .await;

    // The right CA but the wrong name is refused too.
    s.write(
        "misnamed.yaml",
        &proxy(
            "misnamed",
            "misnamed.example.test",
            &format!(
                "{url}    tls:\n      serverName: other.example.test\n      caBundle: |\n{}",
                indented(&indented(&indented(&ca)))
            ),
            "",
        ),
    );
    s.ready("misnamed", "True").await;
    s.wait_for("misnamed.example.test", 502, "").await;

    // Skipping verification is explicit and shown.
    s.write(
        "skipped.yaml",
        &proxy(
            "skipped",
            "skipped.example.test",
            &format!("{url}    tls:\n      insecureSkipVerify: true\n"),
            "",
        ),
    );
    let ready = s.ready("skipped", "True").await;
    assert_eq!(
        ready["status"]["upstream"]["verification"], "Skipped",
        "{ready}"
    );
    s.wait_for("skipped.example.test", 200, "secure upstream")
        .await;
    // The refused ones kept nobody else from serving.
    s.wait_for("anchor.example.test", 200, &app.name).await;
    s.wait_for("system.example.test", 502, "").await;
    s.operator.stop().await.unwrap();
}

#[tokio::test]
async fn a_url_whose_name_stops_resolving_says_so_and_recovers_when_it_resolves() {
    let s = setup("proxy-dns-status").await;
    let network = s.docker.network("dns-status").await.unwrap();
    let app = s
        .docker
        .run(ContainerSpec::new(images::APP).network(&network))
        .await
        .unwrap();
    s.write(
        "anchor.yaml",
        &proxy("anchor", "anchor.example.test", &by_name(&app.name), ""),
    );
    s.ready("anchor", "True").await;
    // A name that a container will take only later.
    let later = s.docker.unique_name("later");
    s.write(
        "named.yaml",
        &proxy(
            "named",
            "named.example.test",
            &format!("    url: http://{later}:8080/\n"),
            "",
        ),
    );
    let refused = s.ready("named", "False").await;
    let condition = &refused["status"]["conditions"][0];
    assert_eq!(condition["reason"], "NameNotResolved", "{refused}");
    assert_eq!(
        refused["status"]["upstream"]["problem"],
        format!("{later} does not resolve from the edge: its requests get 502 until it does"),
        "{refused}"
    );
    s.wait_for("named.example.test", 502, "").await;
    s.wait_for("anchor.example.test", 200, &app.name).await;

    // Once the name exists the requests answer at once (nginx asks per request), and the
    // status follows at the Proxy's next look.
    s.docker
        .run(
            ContainerSpec::new(images::APP)
                .name(&later)
                .network(&network),
        )
        .await
        .unwrap();
    s.wait_for("named.example.test", 200, &later).await;
    s.ready("named", "True").await;
    s.operator.stop().await.unwrap();
}
