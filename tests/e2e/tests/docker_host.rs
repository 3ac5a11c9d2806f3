//! The operator reaching Docker the way the docker CLI does: `DOCKER_HOST=tcp://…` through a
//! bridge to the local socket (socat for plain TCP, a small Python TLS bridge requiring a
//! client certificate for `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`), serving a Proxy through the edge and restoring a backup; and the
//! errors that name `DOCKER_HOST` when it is malformed or does not answer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infrapilot_e2e::docker::{ContainerSpec, TestDocker, images};
use infrapilot_e2e::dumps::{Fixture, Kind};
use infrapilot_e2e::edge::{TestEdge, free_port};
use infrapilot_e2e::operator::Operator;
use infrapilot_e2e::process::Process;
use infrapilot_e2e::wait::eventually;
use infrapilot_e2e::{env, names};

use crate::backup::{DATA_CHECKS, RUN_ON_CREATE, check, completed_run, leftover_servers, policy};
use crate::proxy::{by_name, certificate_for, proxy};

/// The local engine's socket, which the bridge forwards to.
const SOCKET: &str = "/var/run/docker.sock";

/// A TLS bridge to the socket that requires a client certificate: `PORT CERT KEY CA SOCKET`.
/// Each direction is copied until its end; the engine's end closes the connection.
// One thread per connection with a non-blocking TLS socket, not asyncio: asyncio's TLS transports
// do not support half-close, so when the operator closed a command's standard input the bridge
// dropped the whole connection, cutting off output the command had not yet written (now and
// then a `pg_restore --list` with no output). Docker's own TLS listener keeps the other half.
const TLS_BRIDGE: &str = r#"
import select, socket, ssl, sys, threading
port, cert, key, ca, path = sys.argv[1:]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED

def relay(client, docker):
    client.setblocking(False)
    reading = True    # the client may still send
    outgoing = b""    # from Docker, not yet sent to the client
    docker_open = True
    while docker_open or outgoing:
        wanted = [docker] if docker_open else []
        if reading:
            wanted.append(client)
        ready, writable, _ = select.select(wanted, [client] if outgoing else [], [], 1)
        while reading and (client in ready or client.pending()):
            try:
                data = client.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not data:
                # The client is done sending: Docker sees the end of the input, and what it
                # still writes goes back.
                reading = False
                docker.shutdown(socket.SHUT_WR)
                break
            docker.sendall(data)
            ready = []
        if docker_open and docker in ready:
            data = docker.recv(65536)
            if data:
                outgoing += data
            else:
                docker_open = False
        if outgoing and (client in writable or not docker_open):
            try:
                sent = client.send(outgoing)
                outgoing = outgoing[sent:]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass

def handle(raw):
    try:
        client = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close()
        return
    print("accepting connection from", client.getpeername(), flush=True)
    docker = socket.socket(socket.AF_UNIX)
    try:
        docker.connect(path)
        relay(client, docker)
    except (ConnectionError, OSError):
        pass
    finally:
        # TLS ends with close_notify: a client that checks (rustls does) takes a bare close as a
        # truncated stream.
        try:
            client.settimeout(2)
            client.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        for s in (client, docker):
            try:
                s.close()
            except OSError:
                pass

listener = socket.create_server(("127.0.0.1", int(port)))
print("listening on", port, flush=True)
while True:
    raw, _ = listener.accept()
    threading.Thread(target=handle, args=(raw,), daemon=True).start()
"#;

/// A bridge from a loopback TCP port to the Docker socket, logging each connection.
struct Bridge {
    port: u16,
    process: Process,
}

impl Bridge {
    /// Plain TCP with socat, or TLS when `tls` gives (server chain, server key, CA of client
    /// certificates) files: the bridge then requires a client certificate that CA signed.
    async fn start(dir: &Path, tls: Option<(&Path, &Path, &Path)>) -> Self {
        let port = free_port();
        let command = match tls {
            None => {
                let mut command = tokio::process::Command::new("socat");
                // `-t`: once the operator has closed a command's standard input, socat waits
                // this long for the rest of the output (0.5 s by default, which cuts off a
                // tool still working on its input: Docker itself waits for the end).
                command
                    .args(["-d", "-d", "-t", "600"])
                    .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
                    .arg(format!("UNIX-CONNECT:{SOCKET}"));
                command
            }
            // Not socat's OPENSSL-LISTEN: its forked children share TLS session tickets but
            // set no session id context, so every resumed session of a client that checks
            // certificates fails ("session id context uninitialized"). Python's ssl sets one.
            Some((cert, key, ca)) => {
                let script = dir.join("tls-bridge.py");
                std::fs::write(&script, TLS_BRIDGE).expect("the bridge script");
                let mut command = tokio::process::Command::new("python3");
                command
                    .arg(&script)
                    .arg(port.to_string())
                    .args([cert, key, ca])
                    .arg(SOCKET);
                command
            }
        };
        let process = Process::spawn("bridge", command, &dir.join("bridge.log"))
            .expect("the bridge starts (tests/env/provision.sh installs socat)");
        let bridge = Self { port, process };
        eventually("the bridge to listen", Duration::from_secs(10), || async {
            if bridge.process.log().contains("listening on") {
                Ok(())
            } else {
                Err(bridge.process.log())
            }
        })
        .await;
        bridge
    }

    /// How many connections the bridge accepted.
    fn connections(&self) -> usize {
        self.process
            .log()
            .matches("accepting connection from")
            .count()
    }
}

/// A Proxy to an app container and a backup validation policy, served and restored by an
/// operator that reaches Docker with `docker_env` only.
async fn proxy_and_backup(test: &str, bridge: &Bridge, dir: &Path, docker_env: &[(&str, &str)]) {
    let docker = TestDocker::new(test).await;
    let edge = TestEdge::new(&docker);
    let app = docker
        .run(ContainerSpec::new(images::APP))
        .await
        .expect("the app container");
    let fixture = Fixture::make(test, &[Kind::Custom, Kind::Directory])
        .await
        .expect("the dumps");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("the manifests directory");
    std::fs::write(
        manifests.join("shop.yaml"),
        proxy("shop", "shop.example.test", &by_name(&app.name), ""),
    )
    .expect("the Proxy manifest");
    // A custom dump reaches pg_restore on its standard input; a directory dump is uploaded.
    for (name, kind) in [("custom", Kind::Custom), ("directory", Kind::Directory)] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            policy(name, &fixture.path(kind), DATA_CHECKS, RUN_ON_CREATE),
        )
        .expect("the policy manifest");
    }
    assert_eq!(bridge.connections(), 0, "nothing used the bridge yet");
    let mut args = vec!["run", "--manifests", "manifests"];
    let edge_args = edge.args();
    args.extend(edge_args.iter().map(String::as_str));
    let operator = Operator::start_with_env(dir, &args, docker_env).expect("the operator starts");

    operator
        .wait_for_condition("proxy", "shop", "Ready", "True")
        .await;
    edge.wait_for("shop.example.test", 200, &app.name, || operator.log())
        .await;
    for name in ["custom", "directory"] {
        let run = completed_run(&operator, name).await;
        assert_eq!(
            run["status"]["phase"], "Succeeded",
            "{name}: {:#}",
            run["status"]
        );
        assert_eq!(check(&run, "restore")["result"], "Passed", "{name}");
        let uid = run["metadata"]["uid"].as_str().expect("a uid");
        assert!(
            leftover_servers(uid).await.is_empty(),
            "{name}: server left"
        );
    }
    // Everything went through the bridge: the operator never used the socket itself.
    assert!(bridge.connections() > 0, "{}", bridge.process.log());
    operator.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_proxy_is_served_and_a_backup_restored_through_docker_host_over_tcp() {
    let dir = env::test_dir("docker-host-tcp");
    let bridge = Bridge::start(&dir, None).await;
    let host = format!("tcp://127.0.0.1:{}", bridge.port);
    proxy_and_backup(
        "docker-host-tcp",
        &bridge,
        &dir.join("operator"),
        &[("DOCKER_HOST", &host)],
    )
    .await;
}

/// A TLS bridge and the operator's certificate directory. The engine's certificate, for
/// `localhost`, and the operator's client certificate are each signed by a CA of its own: the
/// operator trusts the first CA (`ca.pem`), the bridge the second. `wrong_ca` puts the
/// client's CA in `ca.pem` instead, which must not let the operator trust the engine.
async fn tls_bridge(dir: &Path, wrong_ca: bool) -> (Bridge, String) {
    let (server_chain, server_key, server_ca) = certificate_for(&dir.join("server"), "localhost");
    let (client_chain, client_key, client_ca) = certificate_for(&dir.join("client"), "operator");
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).expect("a certificate file");
        path
    };
    let certs = dir.join("docker-certs");
    std::fs::create_dir_all(&certs).expect("the certificate directory");
    write(
        certs.join("ca.pem"),
        if wrong_ca { &client_ca } else { &server_ca },
    );
    write(certs.join("cert.pem"), &client_chain);
    write(certs.join("key.pem"), &client_key);
    let server = (
        write(dir.join("server.pem"), &server_chain),
        write(dir.join("server-key.pem"), &server_key),
        write(dir.join("client-ca.pem"), &client_ca),
    );
    let bridge = Bridge::start(dir, Some((&server.0, &server.1, &server.2))).await;
    (bridge, certs.display().to_string())
}

#[tokio::test]
async fn a_proxy_is_served_and_a_backup_restored_through_docker_host_over_tls() {
    let dir = env::test_dir("docker-host-tls");
    let (bridge, cert_path) = tls_bridge(&dir, false).await;
    let host = format!("tcp://localhost:{}", bridge.port);
    proxy_and_backup(
        "docker-host-tls",
        &bridge,
        &dir.join("operator"),
        &[
            ("DOCKER_HOST", &host),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", &cert_path),
        ],
    )
    .await;
}

/// Starts an operator with a Proxy and `docker_env`, and checks that the Proxy reports that
/// `shown` (the engine as errors name it) does not answer.
async fn unanswered(test: &str, docker_env: &[(&str, &str)], shown: &str) {
    let docker = TestDocker::new(test).await;
    let app = docker
        .run(ContainerSpec::new(images::APP))
        .await
        .expect("the app container");
    let dir = env::test_dir(&names::unique(test));
    std::fs::create_dir_all(dir.join("manifests")).expect("the manifests directory");
    std::fs::write(
        dir.join("manifests/shop.yaml"),
        proxy("shop", "shop.example.test", &by_name(&app.name), ""),
    )
    .expect("the Proxy manifest");
    let operator = Operator::start_with_env(&dir, &["run", "--manifests", "manifests"], docker_env)
        .expect("the operator starts");
    let status = operator
        .wait_for_condition("proxy", "shop", "Ready", "False")
        .await;
    let message = status["status"]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&format!("DOCKER_HOST={shown} does not answer")),
        "{message}"
    );
    operator.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn an_engine_that_does_not_answer_is_reported_naming_docker_host() {
    // Nothing listens there.
    let host = format!("tcp://127.0.0.1:{}", free_port());
    unanswered("docker-host-down", &[("DOCKER_HOST", &host)], &host).await;
}

#[tokio::test]
async fn an_engine_whose_certificate_the_ca_did_not_sign_is_not_trusted() {
    let dir = env::test_dir("docker-host-wrong-ca");
    let (bridge, cert_path) = tls_bridge(&dir, true).await;
    let host = format!("tcp://localhost:{}", bridge.port);
    unanswered(
        "docker-host-wrong-ca",
        &[
            ("DOCKER_HOST", &host),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", &cert_path),
        ],
        &format!("{host} (TLS)"),
    )
    .await;
    // No request got through the handshake (the same bridge serves a trusting operator in
    // the test over TLS).
    assert_eq!(bridge.connections(), 0, "{}", bridge.process.log());
}

#[tokio::test]
async fn a_malformed_docker_host_stops_the_start_with_the_reason() {
    let dir = env::test_dir(&names::unique("docker-host-malformed"));
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    let mut operator = Operator::start_with_env(
        &dir,
        &["run", "--manifests", "manifests"],
        &[("DOCKER_HOST", "ssh://me@docker.example")],
    )
    .unwrap();
    let status = operator
        .process()
        .wait(Duration::from_secs(30))
        .await
        .expect("the operator exits");
    assert!(!status.success());
    let log = operator.log();
    assert!(
        log.contains("DOCKER_HOST=ssh://me@docker.example is malformed: ssh:// is not supported"),
        "{log}"
    );
}
