//! Recording fakes of the outside world (Docker, the edge, the ACME issuer, notifiers, the
//! audit log, objects), for unit tests only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Context, Event, Events, Failure};
use crate::api::Kind;
use crate::audit::{Audit, NewRecord, ObjectRef};
use crate::delivery::{DeliveryError, Message, Notifier, Receipt, Target};
use crate::docker::{
    ContainerEvent, ContainerFacts, Docker, DockerError, ExecOutput, NetworkFacts, NewContainer,
};
use crate::edge::{CONF_DIR, EdgeApi, EdgeError, Served, Wanted};
use crate::proxy::acme::{ChallengeResponder, Issued, Issuer, Request};
use crate::runtime::objects::{ObjectStore, Objects, Selector, Typed};
use crate::secrets::SecretMap;

#[derive(Default)]
pub struct Recorder {
    pub deliveries: Mutex<Vec<(Target, Message)>>,
    pub audit: Mutex<Vec<NewRecord>>,
    pub events: Mutex<Vec<Event>>,
    /// What the next deliveries answer; success when empty.
    pub answers: Mutex<Vec<Result<Receipt, DeliveryError>>>,
}

#[async_trait]
impl Notifier for Recorder {
    async fn deliver(&self, target: &Target, message: &Message) -> Result<Receipt, DeliveryError> {
        self.deliveries
            .lock()
            .unwrap()
            .push((target.clone(), message.clone()));
        let mut answers = self.answers.lock().unwrap();
        if answers.is_empty() {
            Ok(Receipt {
                detail: "250 OK".to_owned(),
            })
        } else {
            answers.remove(0)
        }
    }
}

#[async_trait]
impl Audit for Recorder {
    async fn record(&self, record: NewRecord) -> anyhow::Result<()> {
        self.audit.lock().unwrap().push(record);
        Ok(())
    }
}

#[async_trait]
impl Events for Recorder {
    async fn publish(&self, _object: &ObjectRef, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

pub fn fixed_now() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000).unwrap()
}

pub fn context(recorder: &Arc<Recorder>, secrets: SecretMap) -> Context {
    Context {
        secrets: Arc::new(secrets),
        notifier: recorder.clone(),
        audit: recorder.clone(),
        events: recorder.clone(),
        now: fixed_now,
    }
}

/// Objects of every kind in memory, as the runtimes' object stores keep them. Objects it creates
/// get `creationTimestamp` [`fixed_now`], as an API server would stamp them.
#[derive(Default)]
pub struct MemoryObjects {
    objects: Mutex<std::collections::BTreeMap<(Kind, String, String), serde_json::Value>>,
}

impl MemoryObjects {
    pub fn with<K: Typed>(objects: impl IntoIterator<Item = K>) -> Self {
        let memory = Self::default();
        for object in objects {
            memory.put(&object);
        }
        memory
    }

    /// Stores `object` as it is (status included), replacing one of that name.
    pub fn put<K: Typed>(&self, object: &K) {
        let meta = object.meta();
        let key = (
            K::kind_of(),
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        );
        let value = serde_json::to_value(object).unwrap();
        self.objects.lock().unwrap().insert(key, value);
    }

    /// Every object of kind `K`, by namespace and name.
    pub fn all<K: Typed>(&self) -> Vec<K> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((kind, _, _), _)| *kind == K::kind_of())
            .map(|(_, value)| serde_json::from_value(value.clone()).unwrap())
            .collect()
    }

    pub fn port(self: &Arc<Self>) -> Objects {
        Objects(self.clone())
    }

    /// The objects of `kind` in `namespace` (every one when `None`) that `selector` selects.
    fn select(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Vec<serde_json::Value> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|((k, ns, _), value)| {
                *k == kind && namespace.is_none_or(|n| n == ns) && selector.matches(value)
            })
            .map(|(_, value)| value.clone())
            .collect()
    }
}

#[async_trait]
impl ObjectStore for MemoryObjects {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, Failure> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        Ok(self.objects.lock().unwrap().get(&key).cloned())
    }

    async fn list(
        &self,
        kind: Kind,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Vec<serde_json::Value>, Failure> {
        Ok(self.select(kind, Some(namespace), selector))
    }

    async fn list_all(
        &self,
        kind: Kind,
        selector: &Selector,
    ) -> Result<Vec<serde_json::Value>, Failure> {
        Ok(self.select(kind, None, selector))
    }

    async fn create(&self, kind: Kind, mut object: serde_json::Value) -> Result<(), Failure> {
        let text = |pointer: &str| {
            object
                .pointer(pointer)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let key = (kind, text("/metadata/namespace"), text("/metadata/name"));
        object["metadata"]["creationTimestamp"] = fixed_now().to_string().into();
        self.objects.lock().unwrap().entry(key).or_insert(object);
        Ok(())
    }

    async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), Failure> {
        let key = (kind, namespace.to_owned(), name.to_owned());
        self.objects.lock().unwrap().remove(&key);
        Ok(())
    }
}

/// A Docker engine in memory: upstream containers and networks as a test sets them, and the
/// edge container (`edge`) with its files, whose `nginx -t` rejects any Proxy file containing
/// `BAD`, naming it as nginx would, and any containing `HASH`, naming no file (as nginx does
/// when the server-name hash is too small).
#[derive(Default)]
pub struct MemoryDocker {
    pub state: Mutex<DockerState>,
}

#[derive(Default)]
pub struct DockerState {
    /// Containers other than the edge.
    pub containers: Vec<ContainerFacts>,
    pub networks: Vec<NetworkFacts>,
    /// Questions about containers and networks.
    pub reads: usize,
    /// Every question fails as an engine that does not answer.
    pub unreachable: bool,
    /// Times the edge was created (since it was last removed).
    pub created: usize,
    /// Times the edge was removed.
    pub removed: usize,
    /// The edge's files by absolute path.
    pub files: BTreeMap<String, Vec<u8>>,
    pub uploads: usize,
    pub signals: usize,
    /// Runs of `nginx -t`.
    pub tests: usize,
    /// The edge exists but has stopped; removing it clears this and its files.
    pub edge_stopped: bool,
    /// `nginx -t` also refuses site files containing this, naming them (what nginx accepts
    /// changed: a new image, say).
    pub refuse: Option<String>,
    /// The labels and log rotation the edge was last created with; the labels are what the
    /// edge shows.
    pub edge_labels: BTreeMap<String, String>,
    pub edge_log: Option<crate::docker::LogRotation>,
    /// The edge's output, as [`Docker::output`] serves it (then, following, waits for more).
    pub output: Vec<crate::docker::LogLine>,
}

impl MemoryDocker {
    pub fn with(containers: Vec<ContainerFacts>, networks: Vec<NetworkFacts>) -> Self {
        let docker = Self::default();
        {
            let mut state = docker.state.lock().unwrap();
            state.containers = containers;
            state.networks = networks;
        }
        docker
    }

    /// Counts a question, failing it when the engine is set to be unreachable.
    fn read(&self) -> Result<std::sync::MutexGuard<'_, DockerState>, DockerError> {
        let mut state = self.state.lock().unwrap();
        state.reads += 1;
        if state.unreachable {
            return Err(DockerError::Unreachable("connection refused".to_owned()));
        }
        Ok(state)
    }
}

#[async_trait]
impl Docker for MemoryDocker {
    async fn container_states(&self) -> Result<Vec<crate::docker::ContainerState>, DockerError> {
        let state = self.read()?;
        Ok(state
            .containers
            .iter()
            .map(|c| crate::docker::ContainerState {
                id: c.id.clone(),
                name: c.name.clone(),
                labels: c.labels.clone(),
                running: c.running,
                ..Default::default()
            })
            .collect())
    }

    async fn container(&self, name: &str) -> Result<Option<ContainerFacts>, DockerError> {
        let state = self.read()?;
        if let Some(found) = state
            .containers
            .iter()
            .find(|c| c.name == name || c.id == name)
        {
            return Ok(Some(found.clone()));
        }
        Ok(
            (state.created > 0 && (name == "edge" || name == "edge-id")).then(|| ContainerFacts {
                id: "edge-id".to_owned(),
                name: "edge".to_owned(),
                running: !state.edge_stopped,
                labels: state.edge_labels.clone(),
                ..Default::default()
            }),
        )
    }

    async fn containers_with_labels(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerFacts>, DockerError> {
        let state = self.read()?;
        Ok(state
            .containers
            .iter()
            .filter(|c| labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
            .cloned()
            .collect())
    }

    async fn network(&self, name: &str) -> Result<Option<NetworkFacts>, DockerError> {
        let state = self.read()?;
        Ok(state
            .networks
            .iter()
            .find(|n| n.id == name || n.name == name)
            .cloned())
    }

    async fn create(&self, container: &NewContainer) -> Result<String, DockerError> {
        let mut state = self.state.lock().unwrap();
        state.created += 1;
        state.files.extend(container.files.iter().cloned());
        state.edge_labels.clone_from(&container.labels);
        state.edge_log.clone_from(&container.log);
        Ok("edge-id".to_owned())
    }

    async fn remove(&self, container: &str) -> Result<(), DockerError> {
        let mut state = self.state.lock().unwrap();
        if container == "edge-id" {
            state.removed += 1;
            state.edge_stopped = false;
            state.created = 0;
            state.files.clear();
        }
        Ok(())
    }

    async fn connect(&self, _: &str, _: &str) -> Result<(), DockerError> {
        Ok(())
    }

    async fn disconnect(&self, _: &str, _: &str) -> Result<(), DockerError> {
        Ok(())
    }

    async fn put_files(&self, _: &str, files: &[(String, Vec<u8>)]) -> Result<(), DockerError> {
        let mut state = self.state.lock().unwrap();
        state.uploads += 1;
        state.files.extend(files.iter().cloned());
        Ok(())
    }

    async fn read_files(&self, _: &str, dir: &str) -> Result<Vec<(String, Vec<u8>)>, DockerError> {
        let state = self.state.lock().unwrap();
        Ok(state
            .files
            .iter()
            .filter_map(|(path, content)| {
                let (parent, name) = path.rsplit_once('/')?;
                (parent == dir).then(|| (name.to_owned(), content.clone()))
            })
            .collect())
    }

    async fn exec(&self, _: &str, argv: &[&str]) -> Result<ExecOutput, DockerError> {
        let mut state = self.state.lock().unwrap();
        if argv.first() == Some(&"rm") {
            for path in &argv[2..] {
                state.files.remove(*path);
            }
            return Ok(ExecOutput {
                exit_code: 0,
                output: String::new(),
            });
        }
        if let ["cat", path] = argv {
            return Ok(match state.files.get(*path) {
                Some(content) => ExecOutput {
                    exit_code: 0,
                    output: String::from_utf8_lossy(content).into_owned(),
                },
                None => ExecOutput {
                    exit_code: 1,
                    output: format!("cat: {path}: No such file or directory"),
                },
            });
        }
        state.tests += 1;
        let site = |marker: &str| {
            state.files.iter().find(|(path, content)| {
                path.starts_with(CONF_DIR) && String::from_utf8_lossy(content).contains(marker)
            })
        };
        if site("HASH").is_some() {
            return Ok(ExecOutput {
                exit_code: 1,
                output: "nginx: [emerg] could not build server_names_hash, you should increase server_names_hash_bucket_size: 64\nnginx: configuration file /etc/nginx/nginx.conf test failed\n".to_owned(),
            });
        }
        let refused = state.refuse.clone();
        let bad = site("BAD").or_else(|| refused.as_deref().and_then(site));
        Ok(match bad {
            Some((path, _)) => ExecOutput {
                exit_code: 1,
                output: format!(
                    "nginx: [emerg] unknown directive \"BAD\" in {path}:1\nnginx: configuration file /etc/nginx/nginx.conf test failed\n"
                ),
            },
            None => ExecOutput {
                exit_code: 0,
                output: String::new(),
            },
        })
    }

    async fn signal(&self, _: &str, _: &str) -> Result<(), DockerError> {
        self.state.lock().unwrap().signals += 1;
        Ok(())
    }

    fn events(&self) -> futures::stream::BoxStream<'static, Result<ContainerEvent, DockerError>> {
        Box::pin(futures::stream::pending())
    }

    fn output(
        &self,
        container: &str,
        since: jiff::Timestamp,
        follow: bool,
    ) -> futures::stream::BoxStream<'static, Result<crate::docker::LogLine, DockerError>> {
        use futures::StreamExt;
        let state = self.state.lock().unwrap();
        if state.unreachable {
            return futures::stream::iter([Err(DockerError::Unreachable(
                "connection refused".to_owned(),
            ))])
            .boxed();
        }
        if state.created == 0 || container != "edge" {
            return futures::stream::iter([Err(DockerError::NotFound(format!(
                "no such container: {container}"
            )))])
            .boxed();
        }
        // Whole seconds, as Docker's `since` is.
        let from = since.as_second();
        let lines: Vec<_> = state
            .output
            .iter()
            .filter(|l| l.time.as_second() >= from)
            .cloned()
            .map(Ok)
            .collect();
        let lines = futures::stream::iter(lines);
        if follow {
            lines.chain(futures::stream::pending()).boxed()
        } else {
            lines.boxed()
        }
    }
}

/// A Proxy's files as the edge holds them: absolute path and content.
type Files = Vec<(String, Vec<u8>)>;

/// The edge in memory: serves whatever it is given (or what `answers` says), and records
/// every request.
#[derive(Default)]
pub struct MemoryEdge {
    /// Every configuration it was asked to serve, in order.
    pub applied: Mutex<Vec<Wanted>>,
    /// The files it serves, by Proxy id.
    pub served: Mutex<BTreeMap<String, Files>>,
    /// Times it was asked for a Proxy's files.
    pub files_asked: Mutex<usize>,
    /// HTTP-01 answers published, by token.
    pub challenges: Mutex<BTreeMap<String, String>>,
    pub acme_state: Mutex<BTreeMap<String, Vec<u8>>>,
    pub removed: Mutex<Vec<String>>,
    /// What the next applies answer; serving when empty.
    pub answers: Mutex<Vec<Result<Served, EdgeError>>>,
    /// Names that do not resolve in this edge; every other does.
    pub unresolved: Mutex<std::collections::BTreeSet<String>>,
    /// Proxies a test says the edge left out, handed out by [`EdgeApi::left_out`].
    pub left_out: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef>>>,
}

#[async_trait]
impl EdgeApi for MemoryEdge {
    fn warm(&self) {}

    async fn apply(&self, wanted: Wanted) -> Result<Served, EdgeError> {
        self.applied.lock().unwrap().push(wanted.clone());
        let mut answers = self.answers.lock().unwrap();
        let answer = if answers.is_empty() {
            Ok(Served::Serving)
        } else {
            answers.remove(0)
        };
        if answer == Ok(Served::Serving) {
            self.served.lock().unwrap().insert(wanted.id, wanted.files);
        }
        answer
    }

    async fn remove(&self, id: &str, _object: ObjectRef) -> Result<(), EdgeError> {
        self.removed.lock().unwrap().push(id.to_owned());
        self.served.lock().unwrap().remove(id);
        Ok(())
    }

    async fn publish_challenge(&self, token: &str, answer: &str) -> Result<(), EdgeError> {
        self.challenges
            .lock()
            .unwrap()
            .insert(token.to_owned(), answer.to_owned());
        Ok(())
    }

    async fn files(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, EdgeError> {
        *self.files_asked.lock().unwrap() += 1;
        Ok(self
            .served
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default())
    }

    async fn resolves(&self, host: &str) -> Result<Option<bool>, EdgeError> {
        Ok(Some(!self.unresolved.lock().unwrap().contains(host)))
    }

    fn left_out(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef>> {
        self.left_out.lock().unwrap().take()
    }

    async fn acme_state(
        &self,
        name: &str,
        write: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, EdgeError> {
        let mut state = self.acme_state.lock().unwrap();
        match write {
            Some(content) => {
                state.insert(name.to_owned(), content);
                Ok(None)
            }
            None => Ok(state.get(name).cloned()),
        }
    }
}

/// An ACME server in memory: publishes one challenge answer through the responder, as a real
/// issuance does, then gives the next queued answer (a failure when none is queued).
#[derive(Default)]
pub struct MemoryIssuer {
    pub requests: Mutex<Vec<Request>>,
    pub answers: Mutex<Vec<Result<Issued, String>>>,
}

#[async_trait]
impl Issuer for MemoryIssuer {
    async fn issue(
        &self,
        request: &Request,
        responder: &dyn ChallengeResponder,
    ) -> Result<Issued, String> {
        self.requests.lock().unwrap().push(request.clone());
        responder.publish("token", "token.thumbprint").await?;
        let mut answers = self.answers.lock().unwrap();
        if answers.is_empty() {
            Err("no answer queued".to_owned())
        } else {
            answers.remove(0)
        }
    }
}
