//! Docker containers and networks owned by one test.
//!
//! Everything a [`TestDocker`] creates carries the label [`TEST_LABEL`] (so a whole run's
//! leftovers can be swept) and a scope label unique to it; dropping the `TestDocker` removes
//! everything in its scope, also when the test fails or panics.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use futures::StreamExt;

use crate::Result;

/// Marks every Docker object the tests create; `tests/run.sh` sweeps what carries it.
pub const TEST_LABEL: &str = "infrapilot.io/e2e";
/// Marks the objects of one [`TestDocker`].
pub const SCOPE_LABEL: &str = "infrapilot.io/e2e-scope";

/// The images `tests/env/images.sh` builds.
pub mod images {
    /// Debian's nginx, following the official `nginx` image's contract.
    pub const NGINX: &str = "infrapilot-test/nginx:local";
    /// Debian's PostgreSQL 15, following the official `postgres` image's contract.
    pub const POSTGRES: &str = "infrapilot-test/postgres:local";
    /// A static HTTP server answering with its container's name (its hostname) on port 8080.
    pub const APP: &str = "infrapilot-test/app:local";
}

/// Connects to the local Docker engine with the API version negotiated, or fails the test.
pub async fn connect() -> Docker {
    let docker = Docker::connect_with_local_defaults()
        .expect("the tests need a Docker engine: DOCKER_HOST or /var/run/docker.sock");
    docker
        .negotiate_version()
        .await
        .expect("the Docker engine does not answer: is it running? (`docker info`)")
}

/// A container to create: image, name and the few settings tests need.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    image: String,
    name: Option<String>,
    env: Vec<String>,
    cmd: Option<Vec<String>>,
    network: Option<String>,
    binds: Vec<String>,
    labels: HashMap<String, String>,
}

impl ContainerSpec {
    pub fn new(image: &str) -> Self {
        Self {
            image: image.to_owned(),
            name: None,
            env: Vec::new(),
            cmd: None,
            network: None,
            binds: Vec::new(),
            labels: HashMap::new(),
        }
    }

    /// The container's name (default: unique). Its hostname is the same, which is what the
    /// app image answers with.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push(format!("{key}={value}"));
        self
    }

    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = Some(cmd.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// The network to start on (default: Docker's default bridge).
    pub fn network(mut self, network: &str) -> Self {
        self.network = Some(network.to_owned());
        self
    }

    /// Mounts host path `host` at `container` (`:ro` etc. may follow `container`).
    pub fn bind(mut self, host: &std::path::Path, container: &str) -> Self {
        self.binds.push(format!("{}:{container}", host.display()));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }
}

/// A started container.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
}

/// The result of a command run inside a container.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// Fails with the command's output unless it exited 0.
    pub fn success(self) -> Result<Self> {
        anyhow::ensure!(
            self.exit_code == 0,
            "exited {}: stdout: {} stderr: {}",
            self.exit_code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

/// The Docker objects of one test.
#[derive(Debug)]
pub struct TestDocker {
    docker: Docker,
    scope: String,
}

impl TestDocker {
    /// Connects to the engine and opens a scope for the calling test.
    pub async fn new(test: &str) -> Self {
        Self {
            docker: connect().await,
            scope: crate::names::unique(test),
        }
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// The labels every object of this scope carries; give them to anything created for the
    /// test by other means so that it is cleaned up too.
    pub fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (TEST_LABEL.to_owned(), "true".to_owned()),
            (SCOPE_LABEL.to_owned(), self.scope.clone()),
        ])
    }

    /// A unique name within this scope, for a container or network.
    pub fn unique_name(&self, prefix: &str) -> String {
        crate::names::unique(prefix).replace('_', "-")
    }

    /// `docker run -d` of the PostgreSQL test image's shell, with `args` before the image and
    /// `script` after it, labelled with this scope (cleaned up with it); returns the name.
    pub async fn run_shell(&self, prefix: &str, args: &[&str], script: &str) -> String {
        let name = self.unique_name(prefix);
        let mut command = tokio::process::Command::new("docker");
        command.args(["run", "-d", "--name", &name, "--entrypoint", "sh"]);
        for (key, value) in self.labels() {
            command.args(["--label", &format!("{key}={value}")]);
        }
        command.args(args).args([images::POSTGRES, "-c", script]);
        let output = command.output().await.expect("docker runs");
        assert!(
            output.status.success(),
            "docker run {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        name
    }

    /// Creates a bridge network and returns its name.
    pub async fn network(&self, prefix: &str) -> Result<String> {
        let name = self.unique_name(prefix);
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".to_owned()),
                labels: Some(self.labels()),
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating network {name}"))?;
        Ok(name)
    }

    /// Creates and starts a container. Fails with a hint when the image is missing.
    pub async fn run(&self, spec: ContainerSpec) -> Result<Container> {
        self.require_image(&spec.image).await?;
        let name = spec.name.clone().unwrap_or_else(|| self.unique_name("c"));
        let mut labels = self.labels();
        labels.extend(spec.labels);
        let networking_config = spec.network.as_ref().map(|network| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.clone(),
                EndpointSettings::default(),
            )])),
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            hostname: Some(name.clone()),
            env: Some(spec.env),
            cmd: spec.cmd,
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: Some(spec.binds),
                network_mode: spec.network.clone(),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptionsBuilder::default().name(&name).build()),
                body,
            )
            .await
            .with_context(|| format!("creating container {name} from {}", spec.image))?;
        self.docker
            .start_container(&created.id, None)
            .await
            .with_context(|| format!("starting container {name}"))?;
        Ok(Container {
            id: created.id,
            name,
        })
    }

    async fn require_image(&self, image: &str) -> Result<()> {
        self.docker
            .inspect_image(image)
            .await
            .map(drop)
            .with_context(|| {
                format!(
                    "the image {image} is missing: build the test images with tests/env/images.sh \
                 (tests/run.sh does)"
                )
            })
    }

    /// The container's address on `network`, or on its only network.
    pub async fn ip(&self, container: &str, network: Option<&str>) -> Result<IpAddr> {
        let inspect = self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await?;
        let networks = inspect
            .network_settings
            .and_then(|s| s.networks)
            .with_context(|| format!("{container} has no networks"))?;
        let endpoint = match network {
            Some(network) => networks.get(network),
            None if networks.len() == 1 => networks.values().next(),
            None => anyhow::bail!("{container} is on several networks: name one"),
        }
        .with_context(|| format!("{container} is not on {network:?}"))?;
        let ip = endpoint.ip_address.as_deref().unwrap_or_default();
        ip.parse()
            .with_context(|| format!("{container} has no address yet ({ip:?})"))
    }

    /// Runs `cmd` inside `container` and collects its output and exit code.
    pub async fn exec(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput> {
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let (mut stdout, mut stderr) = (String::new(), String::new());
        if let StartExecResults::Attached { mut output, .. } =
            self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = output.next().await {
                match chunk? {
                    LogOutput::StdOut { message } => {
                        stdout.push_str(&String::from_utf8_lossy(&message))
                    }
                    LogOutput::StdErr { message } => {
                        stderr.push_str(&String::from_utf8_lossy(&message))
                    }
                    _ => {}
                }
            }
        }
        let exit_code = self
            .docker
            .inspect_exec(&exec.id)
            .await?
            .exit_code
            .unwrap_or(-1);
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    /// The names of the containers in this scope (running or not).
    pub async fn containers(&self) -> Result<Vec<String>> {
        list_scope_containers(&self.docker, &self.scope).await
    }

    /// Removes everything in this scope now; dropping does the same.
    pub async fn cleanup(&self) -> Result<()> {
        remove_scope(&self.docker, &self.scope).await
    }
}

impl Drop for TestDocker {
    /// Removes the scope's objects even while a panic unwinds. The test's runtime may be the
    /// one unwinding, so the removal runs on a thread of its own with a fresh client.
    fn drop(&mut self) {
        let scope = self.scope.clone();
        let cleanup = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let docker = Docker::connect_with_local_defaults()?
                    .negotiate_version()
                    .await?;
                tokio::time::timeout(Duration::from_secs(60), remove_scope(&docker, &scope)).await?
            })
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!(
                "warning: cleaning up Docker scope {}: {error:#}",
                self.scope
            ),
            Err(_) => eprintln!("warning: cleaning up Docker scope {} panicked", self.scope),
        }
    }
}

fn scope_filter(scope: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{SCOPE_LABEL}={scope}")])])
}

async fn list_scope_containers(docker: &Docker, scope: &str) -> Result<Vec<String>> {
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&scope_filter(scope))
        .build();
    Ok(docker
        .list_containers(Some(options))
        .await?
        .into_iter()
        .filter_map(|c| c.names.and_then(|n| n.into_iter().next()))
        .map(|n| n.trim_start_matches('/').to_owned())
        .collect())
}

async fn remove_scope(docker: &Docker, scope: &str) -> Result<()> {
    for name in list_scope_containers(docker, scope).await? {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&name, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(error) => return Err(error).with_context(|| format!("removing container {name}")),
        }
    }
    let options = ListNetworksOptionsBuilder::default()
        .filters(&scope_filter(scope))
        .build();
    for network in docker.list_networks(Some(options)).await? {
        let Some(name) = network.name else { continue };
        match docker.remove_network(&name).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(error) => return Err(error).with_context(|| format!("removing network {name}")),
        }
    }
    Ok(())
}

/// When `container` exited, once it has; fails after `timeout`.
pub async fn finished_at(container: &str, timeout: Duration) -> jiff::Timestamp {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let output = tokio::process::Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.FinishedAt}}",
                container,
            ])
            .output()
            .await
            .expect("docker inspect runs");
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if let Some(at) = text.strip_prefix("false ")
            && let Ok(at) = at.parse::<jiff::Timestamp>()
            && at.as_second() > 0
        {
            return at;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{container} did not exit: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Unix socket in front of Docker's that records the first line of every request and whose
/// connections can be cut: [`DockerLink::cut`] closes every open connection (an event stream
/// among them) and refuses new ones until [`DockerLink::restore`]. Give it to the operator as
/// `DOCKER_HOST=unix://PATH`.
#[derive(Debug)]
pub struct DockerLink {
    /// (cuts so far, open): a connection ends at the next cut, however short.
    state: std::sync::Arc<tokio::sync::watch::Sender<(u64, bool)>>,
    requests: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
}

impl DockerLink {
    pub async fn start(path: &std::path::Path) -> Self {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (state, _) = tokio::sync::watch::channel((0u64, true));
        let state = Arc::new(state);
        let requests: Arc<Mutex<Vec<(std::time::Instant, String)>>> = Arc::default();
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("the Docker link's socket");
        let (link_state, link_requests) = (state.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut state = link_state.subscribe();
                let (cuts, open) = *state.borrow_and_update();
                if !open {
                    // Cut: the connection is refused as a dead engine would.
                    continue;
                }
                let requests = link_requests.clone();
                tokio::spawn(async move {
                    let Ok(mut docker) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut docker_read, mut docker_write) = docker.split();
                    let upstream = async {
                        let mut buffer = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buffer).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // A request starts with its method; bodies (tar uploads) are
                            // binary and do not hold these at the start of a read in practice.
                            let chunk = &buffer[..n];
                            let methods =
                                [&b"GET /"[..], b"POST /", b"PUT /", b"DELETE /", b"HEAD /"];
                            if methods.iter().any(|m| chunk.starts_with(m)) {
                                let line = chunk.split(|b| *b == b'\r').next().unwrap_or_default();
                                if let Ok(mut requests) = requests.lock() {
                                    requests.push((
                                        std::time::Instant::now(),
                                        String::from_utf8_lossy(line).into_owned(),
                                    ));
                                }
                            }
                            if docker_write.write_all(chunk).await.is_err() {
                                break;
                            }
                        }
                        let _ = docker_write.shutdown().await;
                    };
                    // Each side's end is passed on: an exec's output ends when Docker closes.
                    let downstream = async {
                        let _ = tokio::io::copy(&mut docker_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::select! {
                        _ = async { tokio::join!(upstream, downstream) } => {}
                        // Cut: both ends are dropped, so the client sees its connection close.
                        _ = state.wait_for(|(now, _)| *now != cuts) => {}
                    }
                });
            }
        });
        Self { state, requests }
    }

    /// Closes every connection, and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.state.send_modify(|(cuts, open)| {
            *cuts += 1;
            *open = false;
        });
    }

    pub fn restore(&self) {
        self.state.send_modify(|(_, open)| *open = true);
    }

    /// The first line (`GET /v1.47/events HTTP/1.1`) of every request since `since`.
    pub fn requests_since(&self, since: std::time::Instant) -> Vec<String> {
        self.requests
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(at, _)| *at >= since)
                    .map(|(_, line)| line.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many requests went through so far.
    pub fn count(&self) -> usize {
        self.requests.lock().map(|r| r.len()).unwrap_or_default()
    }
}
