//! [`Docker`] and [`Runner`] on the engine of `DOCKER_HOST`, through bollard.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerConfig, ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig,
    NetworkConnectRequest, NetworkDisconnectRequest, PortBinding,
};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    DownloadFromContainerOptionsBuilder, EventsOptionsBuilder, InspectContainerOptions,
    InspectNetworkOptions, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions, StopContainerOptions,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::host::Endpoint;

/// A line of `docker logs --timestamps`: Docker's RFC 3339 time (nanoseconds), a space, the
/// line. `None` for anything else.
fn timestamped(message: &[u8]) -> Option<LogLine> {
    let space = message.iter().position(|b| *b == b' ')?;
    let time = std::str::from_utf8(&message[..space]).ok()?.parse().ok()?;
    let mut line = message[space + 1..].to_vec();
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Some(LogLine { time, line })
}
use super::{
    Attached, Attachment, ContainerEvent, ContainerFacts, ContainerState, Docker, DockerError,
    ExecCommand, ExecOutput, ImageFacts, JobContainer, LogLine, NetworkFacts, NewContainer, Output,
    Runner,
};

/// The Docker engine of `DOCKER_HOST` (default the local socket). Connecting is lazy: the API
/// version is negotiated with the first call, again after a failed one, so that an operator
/// without Proxies or backups never needs Docker, and one started before Docker finds it.
#[derive(Clone)]
pub struct Engine {
    docker: bollard::Docker,
    /// How errors name the engine: `DOCKER_HOST=...`, or the default socket.
    named: Arc<str>,
    negotiated: Arc<tokio::sync::OnceCell<()>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Engine({})", self.named)
    }
}

impl Engine {
    /// The engine the environment names (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`,
    /// `DOCKER_CERT_PATH`). Fails on a malformed `DOCKER_HOST` or unusable TLS files; an
    /// engine that does not answer fails the first call instead.
    pub fn connect() -> Result<Self, DockerError> {
        let set = std::env::var("DOCKER_HOST").is_ok_and(|h| !h.is_empty());
        Self::with_endpoint(&Endpoint::from_env()?, set)
    }

    /// The engine at `endpoint`; `from_docker_host` says whether `DOCKER_HOST` named it.
    pub fn with_endpoint(endpoint: &Endpoint, from_docker_host: bool) -> Result<Self, DockerError> {
        let named = if from_docker_host {
            format!("DOCKER_HOST={endpoint}")
        } else {
            format!("{endpoint} (DOCKER_HOST is unset)")
        };
        Ok(Self {
            docker: endpoint.client()?,
            named: named.into(),
            negotiated: Default::default(),
        })
    }

    /// The client, with the API version negotiated.
    async fn client(&self) -> Result<&bollard::Docker, DockerError> {
        self.negotiated
            .get_or_try_init(|| async {
                // The version is shared by every clone of the client.
                self.docker
                    .clone()
                    .negotiate_version()
                    .await
                    .map(drop)
                    .map_err(|e| {
                        DockerError::Unreachable(format!("{} does not answer: {e}", self.named))
                    })
            })
            .await?;
        Ok(&self.docker)
    }

    /// The one mapping of bollard's errors.
    fn error(&self, what: &str, error: BollardError) -> DockerError {
        match error {
            BollardError::DockerResponseServerError {
                status_code: 404,
                message,
            } => DockerError::NotFound(format!("{what}: {message}")),
            BollardError::DockerResponseServerError {
                status_code: 409,
                message,
            } => DockerError::Conflict(format!("{what}: {message}")),
            BollardError::DockerResponseServerError { message, .. } => {
                DockerError::Refused(format!("{what}: {message}"))
            }
            other => DockerError::Unreachable(format!("{what} at {}: {other}", self.named)),
        }
    }

    /// Creates a container from `body`, pulling its image first when it is not on this host
    /// and `pull` says so, as `docker run` would.
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
        pull: bool,
    ) -> Result<String, DockerError> {
        let docker = self.client().await?;
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let what = format!("creating {name}");
        match docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(created) => Ok(created.id),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) if pull => {
                let image = body.image.clone().unwrap_or_default();
                self.pull(&image).await?;
                docker
                    .create_container(Some(options), body)
                    .await
                    .map(|created| created.id)
                    .map_err(|e| self.error(&what, e))
            }
            Err(e) => Err(self.error(&what, e)),
        }
    }

    /// The exit code of a finished exec. Its output ends as the process does; Docker records
    /// the exit code a moment later.
    async fn exec_exit_code(
        docker: bollard::Docker,
        engine: Engine,
        exec: String,
        what: String,
    ) -> Result<i64, DockerError> {
        for _ in 0..200 {
            let inspect = docker
                .inspect_exec(&exec)
                .await
                .map_err(|e| engine.error(&what, e))?;
            if inspect.running != Some(true)
                && let Some(code) = inspect.exit_code
            {
                return Ok(code);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(DockerError::Refused(format!(
            "{what}: Docker reports no exit code"
        )))
    }
}

fn attachments(networks: Option<HashMap<String, EndpointSettings>>) -> Vec<Attachment> {
    let mut list: Vec<Attachment> = networks
        .unwrap_or_default()
        .into_iter()
        .map(|(network, endpoint)| Attachment {
            network,
            network_id: endpoint.network_id.unwrap_or_default(),
            ip: endpoint
                .ip_address
                .as_deref()
                .and_then(|ip| ip.parse().ok()),
        })
        .collect();
    list.sort_by(|a, b| a.network.cmp(&b.network));
    list
}

/// A tar archive of `files` (absolute paths), to extract at `/`.
fn archive(files: &[(String, Vec<u8>)]) -> Result<Vec<u8>, DockerError> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        // Private keys are readable by the nginx master (root) only.
        header.set_mode(if path.ends_with(".key") { 0o600 } else { 0o644 });
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(
                &mut header,
                path.trim_start_matches('/'),
                content.as_slice(),
            )
            .map_err(|e| DockerError::Refused(format!("archiving {path}: {e}")))?;
    }
    builder
        .into_inner()
        .map_err(|e| DockerError::Refused(format!("archiving files: {e}")))
}

#[async_trait]
impl Docker for Engine {
    async fn container(&self, name: &str) -> Result<Option<ContainerFacts>, DockerError> {
        let inspect = match self
            .client()
            .await?
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => inspect,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(self.error(&format!("inspecting container {name}"), e)),
        };
        Ok(Some(ContainerFacts {
            id: inspect.id.unwrap_or_default(),
            name: inspected_name(inspect.name),
            running: inspect.state.and_then(|s| s.running).unwrap_or(false),
            network_mode: inspect
                .host_config
                .and_then(|h| h.network_mode)
                .unwrap_or_default(),
            labels: inspected_labels(inspect.config),
            networks: attachments(inspect.network_settings.and_then(|n| n.networks)),
        }))
    }

    async fn container_states(&self) -> Result<Vec<ContainerState>, DockerError> {
        let client = self.client().await?;
        let options = ListContainersOptionsBuilder::default().all(true).build();
        let list = client
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("listing containers", e))?;
        let mut states = Vec::new();
        for id in list.into_iter().filter_map(|c| c.id) {
            let inspect = match client
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => inspect,
                // Removed between the list and the inspect.
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                Err(e) => return Err(self.error(&format!("inspecting container {id}"), e)),
            };
            let state = inspect.state.unwrap_or_default();
            let unhealthy = state
                .health
                .as_ref()
                .and_then(|h| h.status)
                .is_some_and(|s| s.to_string().eq_ignore_ascii_case("unhealthy"));
            states.push(ContainerState {
                id,
                name: inspected_name(inspect.name),
                labels: inspected_labels(inspect.config),
                running: state.running.unwrap_or(false),
                exit_code: state.exit_code.unwrap_or_default(),
                oom_killed: state.oom_killed.unwrap_or(false),
                unhealthy,
                // Docker writes 0001-01-01T00:00:00Z for a container that never exited.
                finished_at: state
                    .finished_at
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .filter(|t| t.as_second() > 0),
            });
        }
        Ok(states)
    }

    async fn containers_with_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerFacts>, DockerError> {
        let filter: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&HashMap::from([("label".to_owned(), filter)]))
            .build();
        let list = self
            .client()
            .await?
            .list_containers(Some(options))
            .await
            .map_err(|e| self.error("listing containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerFacts {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned(),
                running: c
                    .state
                    .is_some_and(|s| s.to_string().eq_ignore_ascii_case("running")),
                network_mode: c
                    .host_config
                    .and_then(|h| h.network_mode)
                    .unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                networks: attachments(c.network_settings.and_then(|n| n.networks)),
            })
            .collect())
    }

    async fn network(&self, name: &str) -> Result<Option<NetworkFacts>, DockerError> {
        match self
            .client()
            .await?
            .inspect_network(name, None::<InspectNetworkOptions>)
            .await
        {
            Ok(network) => Ok(Some(NetworkFacts {
                id: network.id.unwrap_or_default(),
                name: network.name.unwrap_or_default(),
                driver: network.driver.unwrap_or_default(),
                scope: network.scope.unwrap_or_default(),
            })),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.error(&format!("inspecting network {name}"), e)),
        }
    }

    async fn create(&self, container: &NewContainer) -> Result<String, DockerError> {
        let mut exposed = Vec::new();
        let mut bindings = HashMap::new();
        for (host_ip, host_port, port) in &container.ports {
            let key = format!("{port}/tcp");
            exposed.push(key.clone());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some(host_ip.clone()),
                    host_port: Some(host_port.to_string()),
                }]),
            );
        }
        let body = ContainerCreateBody {
            image: Some(container.image.clone()),
            labels: Some(container.labels.clone().into_iter().collect()),
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                restart_policy: Some(bollard::models::RestartPolicy {
                    name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                log_config: container.log.as_ref().map(|log| HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), log.max_size.clone()),
                        ("max-file".to_owned(), log.max_files.to_string()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self.create_container(&container.name, body, true).await?;
        if !container.files.is_empty() {
            self.put_files(&id, &container.files).await?;
        }
        self.start(&id).await?;
        Ok(id)
    }

    async fn remove(&self, container: &str) -> Result<(), DockerError> {
        // `v`: an image may declare volumes (PostgreSQL's PGDATA); their anonymous volumes
        // belong to the container and would otherwise be left behind, unused.
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self
            .client()
            .await?
            .remove_container(container, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.error(&format!("removing {container}"), e)),
        }
    }

    async fn connect(&self, network: &str, container: &str) -> Result<(), DockerError> {
        let request = NetworkConnectRequest {
            container: container.to_owned(),
            endpoint_config: None,
        };
        self.client()
            .await?
            .connect_network(network, request)
            .await
            .map_err(|e| self.error(&format!("connecting {container} to {network}"), e))
    }

    async fn disconnect(&self, network: &str, container: &str) -> Result<(), DockerError> {
        let request = NetworkDisconnectRequest {
            container: container.to_owned(),
            force: Some(false),
        };
        self.client()
            .await?
            .disconnect_network(network, request)
            .await
            .map_err(|e| self.error(&format!("disconnecting {container} from {network}"), e))
    }

    async fn put_files(
        &self,
        container: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<(), DockerError> {
        let tar = archive(files)?;
        self.upload(container, "/", futures::stream::iter([Ok(tar)]).boxed())
            .await
    }

    async fn read_files(
        &self,
        container: &str,
        dir: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, DockerError> {
        let what = format!("reading {dir} in {container}");
        let options = DownloadFromContainerOptionsBuilder::default()
            .path(dir)
            .build();
        let mut stream = self
            .client()
            .await?
            .download_from_container(container, Some(options));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => tar.extend_from_slice(&bytes),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(Vec::new()),
                Err(e) => return Err(self.error(&what, e)),
            }
        }
        let mut files = Vec::new();
        let mut archive = tar::Archive::new(tar.as_slice());
        let entries = archive
            .entries()
            .map_err(|e| DockerError::Refused(format!("{what}: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| DockerError::Refused(format!("{what}: {e}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry
                .path()
                .map_err(|e| DockerError::Refused(format!("{what}: {e}")))?;
            // The archive holds `<dir name>/<file>`; only direct children are wanted.
            let parts: Vec<String> = path
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.len() != 2 {
                continue;
            }
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content)
                .map_err(|e| DockerError::Refused(format!("{what}: {e}")))?;
            files.push((parts[1].clone(), content));
        }
        Ok(files)
    }

    async fn exec(&self, container: &str, argv: &[&str]) -> Result<ExecOutput, DockerError> {
        let command = ExecCommand {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        let mut attached = self.attach(container, &command).await?;
        let mut output = String::new();
        while let Some(chunk) = attached.output.next().await {
            let (Output::Stdout(message) | Output::Stderr(message)) = chunk?;
            output.push_str(&String::from_utf8_lossy(&message));
        }
        let exit_code = attached.exit_code.await?;
        Ok(ExecOutput { exit_code, output })
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let filters = HashMap::from([(
            "type".to_owned(),
            vec!["container".to_owned(), "network".to_owned()],
        )]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let engine = self.clone();
        futures::stream::once(async move {
            let docker = match engine.client().await {
                Ok(docker) => docker.clone(),
                Err(e) => return futures::stream::iter([Err(e)]).boxed(),
            };
            docker
                .events(Some(options))
                .filter_map(move |event| {
                    let engine = engine.clone();
                    async move {
                        let event = match event {
                            Ok(event) => event,
                            Err(e) => return Some(Err(engine.error("following Docker events", e))),
                        };
                        container_event(event).map(Ok)
                    }
                })
                .boxed()
        })
        .flatten()
        .boxed()
    }

    fn output(
        &self,
        container: &str,
        since: jiff::Timestamp,
        follow: bool,
    ) -> BoxStream<'static, Result<LogLine, DockerError>> {
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .timestamps(true)
            // The API takes whole seconds as an i32 (until 2038).
            .since(i32::try_from(since.as_second()).unwrap_or(i32::MAX))
            .build();
        let engine = self.clone();
        let container = container.to_owned();
        futures::stream::once(async move {
            let docker = match engine.client().await {
                Ok(docker) => docker.clone(),
                Err(e) => return futures::stream::iter([Err(e)]).boxed(),
            };
            let what = format!("following the output of {container}");
            docker
                .logs(&container, Some(options))
                .filter_map(move |chunk| {
                    let result = match chunk {
                        Ok(LogOutput::StdOut { message }) => timestamped(&message).map(Ok),
                        Ok(_) => None,
                        Err(e) => Some(Err(engine.error(&what, e))),
                    };
                    async move { result }
                })
                .boxed()
        })
        .flatten()
        .boxed()
    }

    async fn signal(&self, container: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        self.client()
            .await?
            .kill_container(container, Some(options))
            .await
            .map_err(|e| self.error(&format!("signalling {container}"), e))
    }
}

/// A container's name as an inspect gives it, without the leading `/`.
fn inspected_name(name: Option<String>) -> String {
    name.unwrap_or_default().trim_start_matches('/').to_owned()
}

/// A container's labels as an inspect gives them.
fn inspected_labels(config: Option<bollard::models::ContainerConfig>) -> BTreeMap<String, String> {
    config
        .and_then(|c| c.labels)
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The container or network event, when it is one InfraPilot follows (upstreams, crashes).
fn container_event(event: bollard::models::EventMessage) -> Option<ContainerEvent> {
    let action = event.action.unwrap_or_default();
    let actor = event.actor.unwrap_or_default();
    let mut attributes = actor.attributes.unwrap_or_default();
    let network = event
        .typ
        .is_some_and(|t| t.to_string().eq_ignore_ascii_case("network"));
    let (container_id, container_name) = if network {
        (
            attributes.remove("container").unwrap_or_default(),
            String::new(),
        )
    } else {
        let name = attributes.remove("name").unwrap_or_default();
        (actor.id.unwrap_or_default(), name)
    };
    // Network and exec events carry no labels; container events carry them all, with the
    // attributes Docker adds (the image, a die's exit code, a kill's signal).
    let wanted = matches!(
        action.as_str(),
        "start" | "die" | "stop" | "destroy" | "rename" | "connect" | "disconnect" | "kill" | "oom"
    ) || action.starts_with("health_status");
    let exit_code = attributes.remove("exitCode").and_then(|c| c.parse().ok());
    wanted.then(|| ContainerEvent {
        action,
        container_id,
        container_name,
        labels: attributes.into_iter().collect(),
        exit_code,
    })
}

#[async_trait]
impl Runner for Engine {
    async fn image(&self, reference: &str) -> Result<Option<ImageFacts>, DockerError> {
        match self.client().await?.inspect_image(reference).await {
            Ok(inspect) => {
                let config = inspect.config.unwrap_or_default();
                Ok(Some(ImageFacts {
                    id: inspect.id.unwrap_or_default(),
                    entrypoint: config.entrypoint.unwrap_or_default(),
                    env: config.env.unwrap_or_default(),
                }))
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.error(&format!("inspecting the image {reference}"), e)),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let pull = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let mut progress = self.client().await?.create_image(Some(pull), None, None);
        while let Some(step) = progress.next().await {
            step.map_err(|e| self.error(&format!("pulling {image}"), e))?;
        }
        Ok(())
    }

    async fn create_job(&self, container: &JobContainer) -> Result<String, DockerError> {
        let body = ContainerCreateBody {
            image: Some(container.image.clone()),
            labels: Some(container.labels.clone().into_iter().collect()),
            env: Some(container.env.clone()),
            entrypoint: container.entrypoint.clone(),
            cmd: Some(container.cmd.clone()),
            host_config: Some(HostConfig {
                network_mode: container.isolated.then(|| "none".to_owned()),
                shm_size: container.shm_bytes,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_container(&container.name, body, false).await
    }

    async fn start(&self, container: &str) -> Result<(), DockerError> {
        self.client()
            .await?
            .start_container(container, None::<StartContainerOptions>)
            .await
            .map_err(|e| self.error(&format!("starting {container}"), e))
    }

    async fn stop(&self, container: &str) -> Result<(), DockerError> {
        self.client()
            .await?
            .stop_container(container, None::<StopContainerOptions>)
            .await
            .map_err(|e| self.error(&format!("stopping {container}"), e))
    }

    async fn exited(&self, container: &str) -> Result<Option<i64>, DockerError> {
        let inspect = self
            .client()
            .await?
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
            .map_err(|e| self.error(&format!("inspecting {container}"), e))?;
        let state = inspect.state.unwrap_or_default();
        Ok((state.running != Some(true)).then(|| state.exit_code.unwrap_or(-1)))
    }

    async fn attach(
        &self,
        container: &str,
        command: &ExecCommand,
    ) -> Result<Attached, DockerError> {
        let tool = command.argv.first().cloned().unwrap_or_default();
        let what = format!("running {tool} in {container}");
        let docker = self.client().await?.clone();
        let exec = docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(command.argv.clone()),
                    env: (!command.env.is_empty()).then(|| command.env.clone()),
                    user: command.user.clone(),
                    attach_stdin: Some(command.stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| self.error(&what, e))?;
        let StartExecResults::Attached { output, input } = docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| self.error(&what, e))?
        else {
            return Err(DockerError::Refused(format!(
                "{what}: Docker did not attach to the command"
            )));
        };
        let engine = self.clone();
        let stream_what = what.clone();
        let output = output
            .filter_map(move |chunk| {
                let item = match chunk {
                    Ok(LogOutput::StdOut { message }) => Some(Ok(Output::Stdout(message.into()))),
                    Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message.into()))),
                    // Standard input echoed, or a terminal's output: no terminal is asked for.
                    Ok(_) => None,
                    Err(e) => Some(Err(engine.error(&stream_what, e))),
                };
                futures::future::ready(item)
            })
            .boxed();
        Ok(Attached {
            stdin: command.stdin.then_some(input),
            output,
            exit_code: Box::pin(Self::exec_exit_code(docker, self.clone(), exec.id, what)),
        })
    }

    async fn upload(
        &self,
        container: &str,
        dir: &str,
        tar: BoxStream<'static, std::io::Result<Vec<u8>>>,
    ) -> Result<(), DockerError> {
        let body = bollard::body_try_stream(tar.map(|item| item.map(Into::into)));
        let options = UploadToContainerOptionsBuilder::default().path(dir).build();
        self.client()
            .await?
            .upload_to_container(container, Some(options), body)
            .await
            .map_err(|e| self.error(&format!("writing files into {container}"), e))
    }

    async fn log_tail(&self, container: &str, lines: usize) -> Result<String, DockerError> {
        let tail = lines.to_string();
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.client().await?.logs(container, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            match chunk.map_err(|e| self.error(&format!("reading the log of {container}"), e))? {
                LogOutput::StdOut { message } | LogOutput::StdErr { message } => {
                    text.push_str(&String::from_utf8_lossy(&message));
                }
                _ => {}
            }
        }
        Ok(text)
    }

    async fn commit(
        &self,
        container: &str,
        repository: &str,
        tag: &str,
        comment: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), DockerError> {
        let options = CommitContainerOptionsBuilder::default()
            .container(container)
            .repo(repository)
            .tag(tag)
            .comment(comment)
            .build();
        let config = ContainerConfig {
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.client()
            .await?
            .commit_container(options, config)
            .await
            .map(drop)
            .map_err(|e| self.error(&format!("committing {container}"), e))
    }
}
