//! [`Docker`] on the local engine through bollard.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest,
    NetworkDisconnectRequest, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, DownloadFromContainerOptionsBuilder,
    EventsOptionsBuilder, InspectContainerOptions, InspectNetworkOptions,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;

use super::{
    Attachment, ContainerEvent, ContainerFacts, Docker, DockerError, ExecOutput, NetworkFacts,
    NewContainer,
};

/// The local Docker engine (`DOCKER_HOST` or `/var/run/docker.sock`). Connecting is lazy: an
/// operator without Proxies never needs Docker.
#[derive(Clone)]
pub struct Engine {
    docker: bollard::Docker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Engine")
    }
}

impl Engine {
    pub fn connect() -> Result<Self, DockerError> {
        let docker = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| DockerError::Unreachable(e.to_string()))?;
        Ok(Self { docker })
    }

    /// The bollard client, for code that shares this connection (the backup restore engine).
    pub fn client(&self) -> bollard::Docker {
        self.docker.clone()
    }
}

fn error(what: &str, error: BollardError) -> DockerError {
    match error {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => DockerError::NotFound(what.to_owned()),
        BollardError::DockerResponseServerError { message, .. } => {
            DockerError::Refused(format!("{what}: {message}"))
        }
        other => DockerError::Unreachable(format!("{what}: {other}")),
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
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspect) => inspect,
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(error(&format!("container {name}"), e)),
        };
        Ok(Some(ContainerFacts {
            id: inspect.id.unwrap_or_default(),
            name: inspect
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned(),
            running: inspect.state.and_then(|s| s.running).unwrap_or(false),
            network_mode: inspect
                .host_config
                .and_then(|h| h.network_mode)
                .unwrap_or_default(),
            labels: inspect
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            networks: attachments(inspect.network_settings.and_then(|n| n.networks)),
        }))
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
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| error("listing containers", e))?;
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
            .docker
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
            Err(e) => Err(error(&format!("network {name}"), e)),
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
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&container.name)
            .build();
        let created = match self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await
        {
            Ok(created) => created,
            // The image is not here: pull it once, as `docker run` would.
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                let pull = CreateImageOptionsBuilder::default()
                    .from_image(&container.image)
                    .build();
                let mut progress = self.docker.create_image(Some(pull), None, None);
                while let Some(step) = progress.next().await {
                    step.map_err(|e| error(&format!("pulling {}", container.image), e))?;
                }
                self.docker
                    .create_container(Some(options), body)
                    .await
                    .map_err(|e| error(&format!("creating {}", container.name), e))?
            }
            Err(e) => return Err(error(&format!("creating {}", container.name), e)),
        };
        if !container.files.is_empty() {
            self.put_files(&created.id, &container.files).await?;
        }
        self.docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(|e| error(&format!("starting {}", container.name), e))?;
        Ok(created.id)
    }

    async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(error(&format!("removing {container}"), e)),
        }
    }

    async fn connect(&self, network: &str, container: &str) -> Result<(), DockerError> {
        let request = NetworkConnectRequest {
            container: container.to_owned(),
            endpoint_config: None,
        };
        self.docker
            .connect_network(network, request)
            .await
            .map_err(|e| error(&format!("connecting {container} to {network}"), e))
    }

    async fn disconnect(&self, network: &str, container: &str) -> Result<(), DockerError> {
        let request = NetworkDisconnectRequest {
            container: container.to_owned(),
            force: Some(false),
        };
        self.docker
            .disconnect_network(network, request)
            .await
            .map_err(|e| error(&format!("disconnecting {container} from {network}"), e))
    }

    async fn put_files(
        &self,
        container: &str,
        files: &[(String, Vec<u8>)],
    ) -> Result<(), DockerError> {
        let tar = archive(files)?;
        let options = UploadToContainerOptionsBuilder::default().path("/").build();
        self.docker
            .upload_to_container(container, Some(options), bollard::body_full(tar.into()))
            .await
            .map_err(|e| error(&format!("writing files into {container}"), e))
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
            .docker
            .download_from_container(container, Some(options));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => tar.extend_from_slice(&bytes),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(Vec::new()),
                Err(e) => return Err(error(&what, e)),
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
        let what = format!("running {} in {container}", argv.join(" "));
        let exec = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| error(&what, e))?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| error(&what, e))?
        {
            while let Some(chunk) = stream.next().await {
                match chunk.map_err(|e| error(&what, e))? {
                    LogOutput::StdOut { message } | LogOutput::StdErr { message } => {
                        output.push_str(&String::from_utf8_lossy(&message));
                    }
                    _ => {}
                }
            }
        }
        let exit_code = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| error(&what, e))?
            .exit_code
            .unwrap_or(-1);
        Ok(ExecOutput { exit_code, output })
    }

    fn events(&self) -> futures::stream::BoxStream<'static, Result<ContainerEvent, DockerError>> {
        let filters = HashMap::from([(
            "type".to_owned(),
            vec!["container".to_owned(), "network".to_owned()],
        )]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        self.docker
            .events(Some(options))
            .filter_map(|event| async move {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => return Some(Err(error("following Docker events", e))),
                };
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
                // Network and exec events carry no labels; container events carry them all.
                let wanted = matches!(
                    action.as_str(),
                    "start" | "die" | "stop" | "destroy" | "rename" | "connect" | "disconnect"
                );
                wanted.then(|| {
                    Ok(ContainerEvent {
                        action,
                        container_id,
                        container_name,
                        labels: attributes.into_iter().collect(),
                    })
                })
            })
            .boxed()
    }

    async fn signal(&self, container: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        self.docker
            .kill_container(container, Some(options))
            .await
            .map_err(|e| error(&format!("signalling {container}"), e))
    }
}
