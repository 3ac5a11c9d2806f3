//! Smoke tests of the test environment itself: each proves one dependency really works, so a
//! later failure points at InfraPilot rather than at the ground it is tested on.

use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use infrapilot_e2e::docker::{ContainerSpec, TestDocker, connect, images};
use infrapilot_e2e::mail::{Maildir, smtp_addr};
use infrapilot_e2e::pebble::Pebble;
use infrapilot_e2e::postgres::{self, TestDatabase};
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::{env, kmock::KubeEmulator, names, operator::Operator};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use sqlx::postgres::PgConnectOptions;

const START: Duration = Duration::from_secs(60);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"key": "value"}
    }))
    .expect("a ConfigMap")
}

#[tokio::test]
async fn nginx_image_serves_http_includes_conf_d_and_passes_nginx_t() {
    let docker = TestDocker::new("nginx-image").await;
    let network = docker.network("net").await.unwrap();
    let nginx = docker
        .run(ContainerSpec::new(images::NGINX).network(&network))
        .await
        .unwrap();
    let ip = docker.ip(&nginx.name, Some(&network)).await.unwrap();

    let welcome = eventually("nginx to answer", START, || async {
        http()
            .get(format!("http://{ip}/"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    })
    .await;
    assert!(welcome.contains("Welcome to nginx"), "{welcome}");

    let test = docker.exec(&nginx.name, &["nginx", "-t"]).await.unwrap();
    assert_eq!(test.exit_code, 0, "{test:?}");
    assert!(test.stderr.contains("syntax is ok"), "{test:?}");

    // The contract the edge relies on: a file dropped into conf.d is served after a reload.
    let site = "server { listen 80; server_name smoke.test; return 200 'from conf.d'; }";
    docker
        .exec(
            &nginx.name,
            &[
                "sh",
                "-c",
                &format!("echo \"{site}\" > /etc/nginx/conf.d/smoke.conf"),
            ],
        )
        .await
        .and_then(|o| o.success())
        .unwrap();
    docker
        .exec(&nginx.name, &["nginx", "-s", "reload"])
        .await
        .and_then(|o| o.success())
        .unwrap();
    let body = eventually("the conf.d site", START, || async {
        let response = http()
            .get(format!("http://{ip}/"))
            .header("Host", "smoke.test")
            .send()
            .await?;
        let body = response.text().await?;
        if body == "from conf.d" {
            Ok(body)
        } else {
            Err(anyhow::anyhow!("got {body:?}"))
        }
    })
    .await;
    assert_eq!(body, "from conf.d");
}

#[tokio::test]
async fn postgres_image_initialises_accepts_queries_and_restores_a_host_pg_dump() {
    // A dump made on the host from a seeded database.
    let source = TestDatabase::create("pg_dump_source").await.unwrap();
    source
        .execute(
            "CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
             INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    let dir = env::test_dir("pg_restore");
    let dump = dir.join("customers.dump");
    let status = tokio::process::Command::new(postgres::tool("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(source.url())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "pg_dump failed: {status}");

    let docker = TestDocker::new("postgres-image").await;
    let network = docker.network("net").await.unwrap();
    let pg = docker
        .run(
            ContainerSpec::new(images::POSTGRES)
                .network(&network)
                .env("POSTGRES_PASSWORD", "smoke-secret")
                .env("POSTGRES_USER", "owner")
                .env("POSTGRES_DB", "restored")
                .bind(&dir, "/backup:ro"),
        )
        .await
        .unwrap();
    let ip = docker.ip(&pg.name, Some(&network)).await.unwrap();
    let options = PgConnectOptions::new()
        .host(&ip.to_string())
        .username("owner")
        .password("smoke-secret")
        .database("restored");
    let pool = eventually(
        "the postgres container to accept connections",
        START,
        || sqlx::PgPool::connect_with(options.clone()),
    )
    .await;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(version.starts_with("15."), "{version}");

    // A wrong password is refused: the image enforces password authentication over TCP.
    let refused = sqlx::PgPool::connect_with(options.clone().password("wrong")).await;
    assert!(refused.is_err(), "a wrong password was accepted");

    // The dump names its source's owner (postgres), a role this server does not have.
    let restore = docker
        .exec(
            &pg.name,
            &[
                "pg_restore",
                "-U",
                "owner",
                "-d",
                "restored",
                "--exit-on-error",
                "--no-owner",
                "/backup/customers.dump",
            ],
        )
        .await
        .unwrap();
    assert_eq!(restore.exit_code, 0, "{restore:?}");
    let (count, last): (i64, String) =
        sqlx::query_as("SELECT count(*), max(name) FILTER (WHERE id = 500) FROM customers")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((count, last.as_str()), (500, "customer 500"));
}

#[tokio::test]
async fn app_image_answers_with_its_container_name() {
    let docker = TestDocker::new("app-image").await;
    let network = docker.network("net").await.unwrap();
    let name = docker.unique_name("web");
    docker
        .run(
            ContainerSpec::new(images::APP)
                .name(&name)
                .network(&network),
        )
        .await
        .unwrap();
    let ip = docker.ip(&name, Some(&network)).await.unwrap();
    let body = eventually("the app to answer", START, || async {
        http()
            .get(format!("http://{ip}:8080/anything"))
            .send()
            .await?
            .text()
            .await
    })
    .await;
    assert_eq!(body.trim(), name);
    let status = http()
        .get(format!("http://{ip}:8080/status/503"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);
}

#[tokio::test]
async fn the_test_postgres_server_answers_and_each_test_gets_its_own_database() {
    let a = TestDatabase::create("server_a").await.unwrap();
    let b = TestDatabase::create("server_b").await.unwrap();
    let version: String = a.scalar("SHOW server_version").await.unwrap();
    assert!(version.starts_with("15."), "{version}");
    a.execute("CREATE TABLE only_in_a (id int)").await.unwrap();
    let in_b: i64 = b
        .scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_in_a'")
        .await
        .unwrap();
    assert_eq!(in_b, 0);

    let name = a.name().to_owned();
    drop(a);
    let left: i64 = b
        .scalar(&format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
        ))
        .await
        .unwrap();
    assert_eq!(left, 0, "the dropped test database {name} is still there");
}

#[tokio::test]
async fn pebble_serves_its_acme_directory_over_https_with_its_ca() {
    let pebble = Pebble::from_env();
    let directory = pebble.directory().await.unwrap();
    for endpoint in ["newAccount", "newNonce", "newOrder"] {
        let url = directory[endpoint].as_str().unwrap_or_default();
        assert!(
            url.starts_with("https://127.0.0.1:"),
            "{endpoint}: {directory}"
        );
    }
    let root = pebble.issuer_root_pem().await.unwrap();
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");

    // Without pebble's CA the listener is not trusted: the CA really is what makes it work.
    let untrusted = http().get(&pebble.directory).send().await;
    assert!(
        untrusted.is_err(),
        "pebble's listener was trusted without its CA"
    );
}

#[tokio::test]
async fn a_message_sent_with_lettre_lands_in_the_maildir() {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let addr = smtp_addr();
    let recipient = format!("{}@example.test", names::unique("smoke"));
    let message = Message::builder()
        .from("InfraPilot <alerts@example.test>".parse().unwrap())
        .to(recipient.parse().unwrap())
        .subject("Smoke test")
        .body("The SMTP sink works.".to_owned())
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .build();
    mailer.send(message).await.unwrap();

    let mail = Maildir::from_env()
        .wait_for("the smoke message", Duration::from_secs(10), |m| {
            m.to.contains(&recipient)
        })
        .await;
    assert_eq!(mail.subject, "Smoke test");
    assert_eq!(mail.body.trim(), "The SMTP sink works.");
}

#[tokio::test]
async fn kmock_serves_a_list_and_a_watch_that_kube_reads() {
    let emulator = KubeEmulator::start(&["v1/configmaps"]).await.unwrap();
    let client = emulator.client().unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");

    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let created = api
        .create(&PostParams::default(), &config_map("first"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some(), "the emulator stamps a uid");
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|cm| cm.metadata.name)
        .collect();
    assert_eq!(names, ["first"]);

    // The watcher lists (seeing "first"), then watches; an object created afterwards arrives
    // as a live event on the open stream. (kmock's watch also replays existing objects, which
    // a real API server would not; kube treats the repeat as an update.)
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let (mut initial, mut live) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !live.iter().any(|name: &String| name == "second") {
        let event = tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .unwrap_or_else(|_| panic!("no live event for \"second\"; log: {}", emulator.log()))
            .unwrap()
            .expect("the watch stream ended");
        match event {
            watcher::Event::InitApply(cm) => initial.push(cm.metadata.name.unwrap_or_default()),
            watcher::Event::InitDone => {
                api.create(&PostParams::default(), &config_map("second"))
                    .await
                    .unwrap();
            }
            watcher::Event::Apply(cm) => live.push(cm.metadata.name.unwrap_or_default()),
            _ => {}
        }
    }
    assert_eq!(initial, ["first"]);
}

#[tokio::test]
async fn containers_and_networks_are_removed_even_when_the_test_panics() {
    let scope_labels = Mutex::new(None);
    let outcome = AssertUnwindSafe(async {
        let docker = TestDocker::new("panicking").await;
        let network = docker.network("net").await.unwrap();
        docker
            .run(ContainerSpec::new(images::APP).network(&network))
            .await
            .unwrap();
        *scope_labels.lock().unwrap() = Some(docker.labels());
        panic!("the test fails half-way");
    })
    .catch_unwind()
    .await;
    assert!(outcome.is_err());

    let labels = scope_labels
        .into_inner()
        .unwrap()
        .expect("the scope was opened");
    let filter = std::collections::HashMap::from([(
        "label".to_owned(),
        vec![format!(
            "{}={}",
            infrapilot_e2e::docker::SCOPE_LABEL,
            labels[infrapilot_e2e::docker::SCOPE_LABEL]
        )],
    )]);
    let docker = connect().await;
    let containers = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    let networks = docker
        .list_networks(Some(
            bollard::query_parameters::ListNetworksOptionsBuilder::default()
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    assert!(containers.is_empty(), "left behind: {containers:?}");
    assert!(networks.is_empty(), "left behind: {networks:?}");
}

#[tokio::test]
async fn the_operator_helper_runs_the_built_binary_and_captures_its_log() {
    let dir = env::test_dir("operator-helper");
    let mut operator = Operator::start(&dir, &["--version"]).unwrap();
    let status = operator
        .process()
        .wait(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}: {}", operator.log());
    assert_eq!(
        operator.log().trim(),
        format!("infrapilot {}", env!("CARGO_PKG_VERSION"))
    );
}
