//! The edge: the one nginx container InfraPilot runs and owns, serving every Proxy.
//!
//! One task owns it. Proxies send the configuration they want; requests that arrive while a
//! change is being applied are coalesced into the next one, so a burst of changes costs one
//! or two reloads. Applying a change is: attach networks, write the files, `nginx -t`, and
//! only if it passes, SIGHUP to the master. A file nginx rejects is put back as it was (or
//! removed when new), its Proxy is told nginx's message, and the others go ahead: the
//! running configuration never includes an unvalidated file, and one bad Proxy never blocks
//! the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::audit::Audit;
use crate::audit::{NewRecord, ObjectRef, Outcome};
use crate::docker::{Docker, DockerError, NewContainer};
use crate::proxy::site;

/// Where the edge reads Proxy configuration (the official image includes `conf.d/*.conf`).
pub(crate) const CONF_DIR: &str = "/etc/nginx/conf.d";
/// The label on everything the operator creates; the edge is recognised by it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub(crate) const MANAGED_BY_VALUE: &str = "infrapilot";
const COMPONENT: &str = "infrapilot.io/component";
/// The controller name in the edge's audit records.
const CONTROLLER: &str = "proxy";
/// The least time between two reloads while changes keep coming.
const RELOAD_SPACING: Duration = Duration::from_millis(750);

/// How the edge is run.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    pub name: String,
    /// An image following the official `nginx` image's contract.
    pub image: String,
    /// The host address the ports are published on.
    pub address: String,
    pub http_port: u16,
    pub https_port: u16,
    /// More labels for the edge container.
    pub labels: BTreeMap<String, String>,
    /// How often the edge is checked, and recreated when it is gone.
    pub check_interval: Duration,
}

/// The configuration one Proxy wants served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// [`site::site_id`] of the Proxy.
    pub id: String,
    pub object: ObjectRef,
    pub config: String,
    /// The networks the edge must be on to reach the upstream.
    pub networks: Vec<String>,
    /// Files the configuration refers to (a certificate and its key): absolute path and
    /// content. Written with the configuration and validated with it.
    pub files: Vec<(String, Vec<u8>)>,
}

/// What became of a wanted configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Served {
    /// It is what nginx serves.
    Serving,
    /// nginx refused it; the previous configuration of this Proxy (if any) keeps serving.
    Rejected(String),
}

/// Why the edge could not take a change at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(
        "a container named {0} exists and was not created by InfraPilot: remove it or choose another --edge-name"
    )]
    NameTaken(String),
    #[error("the edge has stopped")]
    Stopped,
}

impl EdgeError {
    pub fn category(&self) -> crate::retry::Category {
        use crate::retry::Category;
        match self {
            EdgeError::Docker(error) => error.category(),
            EdgeError::NameTaken(_) => Category::Config,
            EdgeError::Stopped => Category::Internal,
        }
    }
}

/// The edge as Proxy reconcilers see it.
#[async_trait]
pub trait EdgeApi: Send + Sync {
    /// Serves `wanted` (or says why nginx refused it).
    async fn apply(&self, wanted: Wanted) -> Result<Served, EdgeError>;
    /// Stops serving the Proxy `id`.
    async fn remove(&self, id: &str, object: ObjectRef) -> Result<(), EdgeError>;
    /// Serves an ACME HTTP-01 answer at `/.well-known/acme-challenge/<token>` (no reload).
    async fn publish_challenge(&self, token: &str, answer: &str) -> Result<(), EdgeError>;
    /// The files (certificate and key) the edge serves for the Proxy `id`, if any.
    async fn files(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, EdgeError>;
    /// Reads or writes a file of the edge's ACME state (account credentials): `name` is a
    /// plain name under [`ACME_STATE_DIR`].
    async fn acme_state(
        &self,
        name: &str,
        write: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, EdgeError>;
}

/// Where the edge keeps ACME account credentials, next to the certificate keys.
pub const ACME_STATE_DIR: &str = "/etc/nginx/infrapilot/acme";

/// Where the answer to a question about a Proxy's files goes.
type FilesReply = oneshot::Sender<Result<Vec<(String, Vec<u8>)>, EdgeError>>;

enum Request {
    Apply(Wanted, oneshot::Sender<Result<Served, EdgeError>>),
    Remove(String, ObjectRef, oneshot::Sender<Result<(), EdgeError>>),
    Challenge(String, String, oneshot::Sender<Result<(), EdgeError>>),
    Files(String, FilesReply),
    AcmeState(
        String,
        Option<Vec<u8>>,
        oneshot::Sender<Result<Option<Vec<u8>>, EdgeError>>,
    ),
}

/// The handle reconcilers hold; the edge task runs while one exists.
#[derive(Clone, Debug)]
pub struct Edge {
    requests: mpsc::UnboundedSender<Request>,
}

impl Edge {
    /// Starts the task that owns the edge. Nothing touches Docker before the first request.
    pub fn start(docker: Arc<dyn Docker>, options: EdgeOptions, audit: Arc<dyn Audit>) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel();
        let owner = Owner {
            docker,
            options,
            audit,
            container: None,
            seeded: false,
            live: BTreeMap::new(),
            attached: BTreeSet::new(),
        };
        tokio::spawn(owner.run(receiver));
        Self { requests }
    }
}

#[async_trait]
impl EdgeApi for Edge {
    async fn apply(&self, wanted: Wanted) -> Result<Served, EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Apply(wanted, reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }

    async fn remove(&self, id: &str, object: ObjectRef) -> Result<(), EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Remove(id.to_owned(), object, reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }

    async fn publish_challenge(&self, token: &str, answer: &str) -> Result<(), EdgeError> {
        let (reply, done) = oneshot::channel();
        self.requests
            .send(Request::Challenge(
                token.to_owned(),
                answer.to_owned(),
                reply,
            ))
            .map_err(|_| EdgeError::Stopped)?;
        done.await.map_err(|_| EdgeError::Stopped)?
    }

    async fn files(&self, id: &str) -> Result<Vec<(String, Vec<u8>)>, EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Files(id.to_owned(), reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }

    async fn acme_state(
        &self,
        name: &str,
        write: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, EdgeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::AcmeState(name.to_owned(), write, reply))
            .map_err(|_| EdgeError::Stopped)?;
        answer.await.map_err(|_| EdgeError::Stopped)?
    }
}

/// A Proxy's configuration as nginx serves it.
#[derive(Clone, Debug)]
struct Live {
    config: String,
    networks: Vec<String>,
    files: Vec<(String, Vec<u8>)>,
    object: Option<ObjectRef>,
}

fn file_name(id: &str) -> String {
    format!("infrapilot-{id}.conf")
}

fn file_path(id: &str) -> String {
    format!("{CONF_DIR}/{}", file_name(id))
}

const EDGE_FILE: &str = "infrapilot-00-edge.conf";
/// Written after every reload: the digest of the Proxy files nginx then loaded. An operator
/// killed between writing files and reloading leaves files on disk that nginx never loaded;
/// a digest that does not match tells the next operator to validate and reload once.
const APPLIED_MARKER: &str = "/etc/nginx/infrapilot/applied";

/// The digest of what is live: every Proxy's configuration and files.
fn digest(live: &BTreeMap<String, Live>) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (id, site) in live {
        hasher.update(id.as_bytes());
        hasher.update(site.config.as_bytes());
        let mut files = site.files.clone();
        files.sort();
        for (path, content) in files {
            hasher.update(path.as_bytes());
            hasher.update(&content);
        }
    }
    hex::encode(hasher.finalize())
}

/// The id of the Proxy file nginx names in its error, if it is one of ours.
pub fn rejected_id(nginx_output: &str) -> Option<String> {
    let marker = format!("{CONF_DIR}/infrapilot-");
    let start = nginx_output.find(&marker)? + marker.len();
    let rest = &nginx_output[start..];
    let id: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (rest[id.len()..].starts_with(".conf") && id.starts_with('p')).then_some(id)
}

/// nginx's message without the noise around it, for a condition.
fn nginx_message(output: &str) -> String {
    output
        .lines()
        .filter(|l| !l.contains("test failed") && !l.trim().is_empty())
        .map(|line| {
            let line = line.trim_start_matches("nginx: ").trim();
            // `2026/11/22 05:28:16 [emerg] 18#18: invalid ...` → `[emerg] invalid ...`
            match (line.find('['), line.find("#")) {
                (Some(level), Some(pid)) if level < pid => {
                    let level_end = line[level..].find(']').map_or(level, |e| level + e + 1);
                    let rest = line[pid..].split_once(": ").map_or("", |(_, r)| r);
                    format!("{} {rest}", &line[level..level_end])
                }
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

struct Owner {
    docker: Arc<dyn Docker>,
    options: EdgeOptions,
    audit: Arc<dyn Audit>,
    /// The edge container's id once known to run.
    container: Option<String>,
    /// Whether `live` was read back from an edge that already ran.
    seeded: bool,
    live: BTreeMap<String, Live>,
    /// Networks the edge was connected to for Proxies.
    attached: BTreeSet<String>,
}

/// One batch: what each Proxy wants now (None: removal), and who waits for the answer.
#[derive(Default)]
struct Batch {
    wanted: BTreeMap<String, (Option<Wanted>, ObjectRef)>,
    applies: Vec<(String, oneshot::Sender<Result<Served, EdgeError>>)>,
    removes: Vec<oneshot::Sender<Result<(), EdgeError>>>,
}

impl Batch {
    fn add(&mut self, request: Request) {
        match request {
            // Answered before batching (see `Owner::run`).
            Request::Challenge(_, _, reply) => {
                let _ = reply.send(Err(EdgeError::Stopped));
            }
            Request::Files(_, reply) => {
                let _ = reply.send(Err(EdgeError::Stopped));
            }
            Request::AcmeState(_, _, reply) => {
                let _ = reply.send(Err(EdgeError::Stopped));
            }
            Request::Apply(wanted, reply) => {
                self.applies.push((wanted.id.clone(), reply));
                let object = wanted.object.clone();
                self.wanted
                    .insert(wanted.id.clone(), (Some(wanted), object));
            }
            Request::Remove(id, object, reply) => {
                self.removes.push(reply);
                self.wanted.insert(id, (None, object));
            }
        }
    }
}

impl Owner {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>) {
        let mut last_reload: Option<tokio::time::Instant> = None;
        let mut check = tokio::time::interval(self.options.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    // Challenges and questions are answered at once: they change no configuration.
                    let request = match request {
                        Request::Challenge(token, answer, reply) => {
                            let _ = reply.send(self.publish_challenge(&token, &answer).await);
                            continue;
                        }
                        Request::Files(id, reply) => {
                            let _ = reply.send(self.live_files(&id).await);
                            continue;
                        }
                        Request::AcmeState(name, write, reply) => {
                            let _ = reply.send(self.acme_state(&name, write).await);
                            continue;
                        }
                        other => other,
                    };
                    // A change after a quiet spell is applied at once. Right after a reload,
                    // the next one waits out RELOAD_SPACING, and everything that arrives
                    // meanwhile joins it: a burst of changes costs a few reloads, not one each.
                    if let Some(last) = last_reload {
                        tokio::time::sleep_until(last + RELOAD_SPACING).await;
                    }
                    let mut batch = Batch::default();
                    batch.add(request);
                    while let Ok(more) = requests.try_recv() {
                        batch.add(more);
                    }
                    let started = tokio::time::Instant::now();
                    if self.process(batch).await {
                        last_reload = Some(started);
                    }
                }
                _ = check.tick() => {
                    if self.container.is_some()
                        && let Err(error) = self.ensure_running(None).await
                    {
                        warn!(edge = %self.options.name, "cannot keep the edge running: {error}");
                    }
                }
            }
        }
    }

    /// Applies a batch and answers its requests; returns whether nginx was reloaded.
    async fn process(&mut self, batch: Batch) -> bool {
        let Batch {
            wanted,
            applies,
            removes,
        } = batch;
        let trigger = wanted.values().next().map(|(_, object)| object.clone());
        let result = match self.ensure_running(trigger).await {
            Ok(()) => self.apply(wanted).await,
            Err(error) => Err(error),
        };
        let reloaded = matches!(&result, Ok((_, true)));
        match result.map(|(outcomes, _)| outcomes) {
            Ok(outcomes) => {
                for (id, reply) in applies {
                    let served = outcomes.get(&id).cloned().unwrap_or(Served::Serving);
                    let _ = reply.send(Ok(served));
                }
                for reply in removes {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(error) => {
                for (_, reply) in applies {
                    let _ = reply.send(Err(error.clone()));
                }
                for reply in removes {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
        reloaded
    }

    async fn publish_challenge(&mut self, token: &str, answer: &str) -> Result<(), EdgeError> {
        if !crate::proxy::acme::valid_token(token) {
            return Err(EdgeError::Docker(DockerError::Refused(format!(
                "invalid ACME token {token:?}"
            ))));
        }
        self.ensure_running(None).await?;
        let container = self.container.clone().ok_or(EdgeError::Stopped)?;
        let file = (
            format!("{}/{token}", site::ACME_DIR),
            answer.as_bytes().to_vec(),
        );
        self.docker.put_files(&container, &[file]).await?;
        Ok(())
    }

    async fn acme_state(
        &mut self,
        name: &str,
        write: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, EdgeError> {
        if !crate::proxy::acme::valid_token(name) {
            return Err(EdgeError::Docker(DockerError::Refused(format!(
                "invalid ACME state name {name:?}"
            ))));
        }
        self.ensure_running(None).await?;
        let container = self.container.clone().ok_or(EdgeError::Stopped)?;
        // `.key`: written readable by the nginx master (root) only.
        let path = format!("{ACME_STATE_DIR}/{name}.key");
        match write {
            Some(content) => {
                self.docker
                    .put_files(&container, &[(path, content)])
                    .await?;
                Ok(None)
            }
            None => Ok(self
                .docker
                .read_files(&container, ACME_STATE_DIR)
                .await?
                .into_iter()
                .find(|(file, _)| *file == format!("{name}.key"))
                .map(|(_, content)| content)),
        }
    }

    async fn live_files(&mut self, id: &str) -> Result<Vec<(String, Vec<u8>)>, EdgeError> {
        if self.container.is_none() {
            self.ensure_running(None).await?;
        }
        Ok(self
            .live
            .get(id)
            .map(|l| l.files.clone())
            .unwrap_or_default())
    }

    /// Makes sure the edge container exists and runs: finds it (learning what it serves when
    /// it ran before this process), or creates it with everything that is live.
    async fn ensure_running(&mut self, trigger: Option<ObjectRef>) -> Result<(), EdgeError> {
        let name = self.options.name.clone();
        match self.docker.container(&name).await? {
            Some(found)
                if found.labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) =>
            {
                Err(EdgeError::NameTaken(name))
            }
            Some(found) if found.running => {
                if !self.seeded {
                    self.seed(&found.id, &found.networks).await?;
                }
                self.container = Some(found.id);
                Ok(())
            }
            found => {
                if let Some(stale) = found {
                    // Stopped or dead: start over from what should be served.
                    self.docker.remove(&stale.id).await?;
                }
                self.create(trigger).await
            }
        }
    }

    /// Learns what an edge that survived a restart of the operator serves, so that nothing
    /// identical is written or reloaded again.
    async fn seed(
        &mut self,
        id: &str,
        networks: &[crate::docker::Attachment],
    ) -> Result<(), EdgeError> {
        for (name, content) in self.docker.read_files(id, CONF_DIR).await? {
            let Some(site) = name
                .strip_prefix("infrapilot-")
                .and_then(|n| n.strip_suffix(".conf"))
                .filter(|n| n.starts_with('p'))
            else {
                continue;
            };
            self.live.entry(site.to_owned()).or_insert(Live {
                config: String::from_utf8_lossy(&content).into_owned(),
                networks: Vec::new(),
                files: Vec::new(),
                object: None,
            });
        }
        for (name, content) in self.docker.read_files(id, site::TLS_DIR).await? {
            let site = name.split('.').next().unwrap_or_default();
            if let Some(live) = self.live.get_mut(site) {
                live.files
                    .push((format!("{}/{name}", site::TLS_DIR), content));
            }
        }
        let marker = self
            .docker
            .read_files(id, APPLIED_MARKER.rsplit_once('/').map_or("/", |(d, _)| d))
            .await?
            .into_iter()
            .find(|(name, _)| APPLIED_MARKER.ends_with(&format!("/{name}")))
            .map(|(_, content)| String::from_utf8_lossy(&content).trim().to_owned());
        if marker.as_deref() != Some(digest(&self.live).as_str()) {
            warn!(edge = %self.options.name, "the edge holds files it never loaded (an operator stopped mid-change): validating and reloading once");
            self.resync(id).await?;
        }
        self.attached = networks
            .iter()
            .map(|a| a.network.clone())
            .filter(|n| n != "bridge")
            .collect();
        self.seeded = true;
        info!(edge = %self.options.name, proxies = self.live.len(), "found the running edge");
        Ok(())
    }

    /// Makes nginx load what is on disk: validates, takes out each Proxy file nginx rejects
    /// (its Proxy writes it again when next reconciled), reloads, and records the digest.
    async fn resync(&mut self, container: &str) -> Result<(), EdgeError> {
        loop {
            let test = self.docker.exec(container, &["nginx", "-t"]).await?;
            if test.exit_code == 0 {
                break;
            }
            let Some(id) = rejected_id(&test.output).filter(|id| self.live.contains_key(id)) else {
                warn!(edge = %self.options.name, "the edge's configuration is invalid: {}", nginx_message(&test.output));
                return Ok(());
            };
            let mut argv = vec!["rm".to_owned(), "-f".to_owned(), file_path(&id)];
            if let Some(live) = self.live.remove(&id) {
                argv.extend(live.files.into_iter().map(|(path, _)| path));
            }
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            self.docker.exec(container, &argv).await?;
        }
        let result = self.docker.signal(container, "HUP").await;
        let target = format!("edge {}", self.options.name);
        self.audit(
            None,
            "nginx.reload",
            &target,
            &result.as_ref().map(|_| ()).map_err(ToString::to_string),
        )
        .await;
        result?;
        self.write_marker(container).await
    }

    async fn write_marker(&self, container: &str) -> Result<(), EdgeError> {
        let marker = (APPLIED_MARKER.to_owned(), digest(&self.live).into_bytes());
        self.docker.put_files(container, &[marker]).await?;
        Ok(())
    }

    async fn create(&mut self, trigger: Option<ObjectRef>) -> Result<(), EdgeError> {
        let mut labels = self.options.labels.clone();
        labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned());
        labels.insert(COMPONENT.to_owned(), "edge".to_owned());
        let mut files = vec![
            (
                format!("{CONF_DIR}/{EDGE_FILE}"),
                site::edge_config().into_bytes(),
            ),
            // The image's own default server would answer for unknown hosts.
            (
                format!("{CONF_DIR}/default.conf"),
                b"# Replaced by InfraPilot: unknown hosts get 404 from infrapilot-00-edge.conf.\n"
                    .to_vec(),
            ),
            // Docker creates the parent directories of archived files.
            (format!("{}/.keep", site::ACCESS_LOG_DIR), Vec::new()),
        ];
        for (id, live) in &self.live {
            files.extend(live.files.iter().cloned());
            files.push((file_path(id), live.config.clone().into_bytes()));
        }
        // Files written before nginx starts are what it loads.
        files.push((APPLIED_MARKER.to_owned(), digest(&self.live).into_bytes()));
        let container = NewContainer {
            name: self.options.name.clone(),
            image: self.options.image.clone(),
            labels,
            ports: vec![
                (self.options.address.clone(), self.options.http_port, 80),
                (self.options.address.clone(), self.options.https_port, 443),
            ],
            files,
        };
        let result = self.docker.create(&container).await;
        let target = format!("container {}", self.options.name);
        self.audit(
            trigger.as_ref(),
            "docker.container.create",
            &target,
            &result.as_ref().map(drop).map_err(ToString::to_string),
        )
        .await;
        let id = result?;
        info!(edge = %self.options.name, image = %self.options.image, "created the edge");
        self.container = Some(id.clone());
        self.seeded = true;
        let networks: Vec<String> = self.attached.iter().cloned().collect();
        for network in networks {
            self.docker.connect(&network, &id).await?;
        }
        Ok(())
    }

    /// Applies a batch to the running edge; returns what became of each Proxy's wish.
    async fn apply(
        &mut self,
        wanted: BTreeMap<String, (Option<Wanted>, ObjectRef)>,
    ) -> Result<(BTreeMap<String, Served>, bool), EdgeError> {
        let container = self.container.clone().ok_or(EdgeError::Stopped)?;
        let mut outcomes = BTreeMap::new();
        let mut writes: BTreeMap<String, Wanted> = BTreeMap::new();
        let mut removals: BTreeMap<String, ObjectRef> = BTreeMap::new();
        for (id, (wish, object)) in wanted {
            match wish {
                Some(wish) => {
                    let unchanged = self
                        .live
                        .get(&id)
                        .is_some_and(|l| l.config == wish.config && l.files == wish.files);
                    if unchanged {
                        if let Some(live) = self.live.get_mut(&id) {
                            live.networks = wish.networks.clone();
                            live.object = Some(wish.object.clone());
                        }
                        outcomes.insert(id, Served::Serving);
                    } else {
                        writes.insert(id, wish);
                    }
                }
                None if self.live.contains_key(&id) => {
                    removals.insert(id, object);
                }
                None => {}
            }
        }
        // Networks first: nginx must be able to reach an upstream once it serves it.
        for wish in writes.values() {
            for network in &wish.networks {
                if network == "bridge" || self.attached.contains(network) {
                    continue;
                }
                let result = self.docker.connect(network, &container).await;
                let target = format!("network {network}");
                self.audit(
                    Some(&wish.object),
                    "docker.network.connect",
                    &target,
                    &result.as_ref().map(|_| ()).map_err(ToString::to_string),
                )
                .await;
                match result {
                    Ok(()) => {
                        self.attached.insert(network.clone());
                    }
                    // Attached already (by a previous process, say).
                    Err(DockerError::Refused(message)) if message.contains("already exists") => {
                        self.attached.insert(network.clone());
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
        if writes.is_empty() && removals.is_empty() {
            self.detach_unused(&container).await;
            return Ok((outcomes, false));
        }

        let files: Vec<(String, Vec<u8>)> = writes
            .iter()
            .flat_map(|(id, wish)| {
                // The files the configuration refers to first: nginx -t loads them.
                let mut files = wish.files.clone();
                files.push((file_path(id), wish.config.clone().into_bytes()));
                files
            })
            .collect();
        if !files.is_empty() {
            self.docker.put_files(&container, &files).await?;
        }
        if !removals.is_empty() {
            let paths: Vec<String> = removals
                .keys()
                .flat_map(|id| {
                    let files = self
                        .live
                        .get(id)
                        .map(|l| l.files.clone())
                        .unwrap_or_default();
                    std::iter::once(file_path(id)).chain(files.into_iter().map(|(path, _)| path))
                })
                .collect();
            let mut argv = vec!["rm", "-f"];
            argv.extend(paths.iter().map(String::as_str));
            self.docker.exec(&container, &argv).await?;
        }

        // Validate; put back each file nginx names until what remains passes.
        let mut rejected: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let test = self.docker.exec(&container, &["nginx", "-t"]).await?;
            if test.exit_code == 0 {
                break;
            }
            let message = nginx_message(&test.output);
            let culprit = rejected_id(&test.output).filter(|id| !rejected.contains_key(id));
            let Some(id) = culprit else {
                // Not a file of one Proxy: undo the whole batch and report it to all.
                warn!(edge = %self.options.name, "nginx rejected the configuration: {message}");
                let all: Vec<String> = writes.keys().cloned().collect();
                for id in all {
                    let written = writes.get(&id).map(|w| w.files.clone()).unwrap_or_default();
                    self.restore(&container, &id, &written).await?;
                    rejected.insert(id, message.clone());
                }
                let test = self.docker.exec(&container, &["nginx", "-t"]).await?;
                if test.exit_code != 0 {
                    warn!(edge = %self.options.name, "the edge's configuration stays invalid: {}", nginx_message(&test.output));
                }
                break;
            };
            let written = writes.get(&id).map(|w| w.files.clone()).unwrap_or_default();
            self.restore(&container, &id, &written).await?;
            rejected.insert(id, message);
        }

        let applied: Vec<String> = writes
            .keys()
            .filter(|id| !rejected.contains_key(*id))
            .cloned()
            .collect();
        let reload = !applied.is_empty() || !removals.is_empty();
        // Record first, then reload: a record always precedes its effect, and an operator
        // stopped in between leaves a stale marker, so the next one reloads (see `seed`).
        let validated: Result<(), String> = Ok(());
        for id in &applied {
            if let Some(wish) = writes.remove(id) {
                let target = format!("edge {}: conf.d/{}", self.options.name, file_name(id));
                self.audit(
                    Some(&wish.object),
                    "nginx.config.apply",
                    &target,
                    &validated,
                )
                .await;
                self.live.insert(
                    id.clone(),
                    Live {
                        config: wish.config,
                        networks: wish.networks,
                        files: wish.files,
                        object: Some(wish.object),
                    },
                );
                outcomes.insert(id.clone(), Served::Serving);
            }
        }
        for (id, object) in &removals {
            let target = format!("edge {}: conf.d/{}", self.options.name, file_name(id));
            self.audit(Some(object), "nginx.config.remove", &target, &validated)
                .await;
            self.live.remove(id);
        }
        for (id, message) in rejected.iter() {
            if let Some(wish) = writes.get(id) {
                let target = format!("edge {}: conf.d/{}", self.options.name, file_name(id));
                self.audit(
                    Some(&wish.object),
                    "nginx.config.apply",
                    &target,
                    &Err(message.clone()),
                )
                .await;
            }
            outcomes.insert(id.clone(), Served::Rejected(message.clone()));
        }
        if reload {
            let result = self.docker.signal(&container, "HUP").await;
            info!(
                edge = %self.options.name,
                applied = applied.len(),
                removed = removals.len(),
                rejected = rejected.len(),
                "reloaded nginx"
            );
            if let Err(error) = result {
                let target = format!("edge {}", self.options.name);
                self.audit(None, "nginx.reload", &target, &Err(error.to_string()))
                    .await;
                return Err(error.into());
            }
        }
        if reload {
            self.write_marker(&container).await?;
        }
        self.detach_unused(&container).await;
        Ok((outcomes, reload))
    }

    /// Puts a Proxy's file back as it is live, or removes it when it was new.
    async fn restore(
        &self,
        container: &str,
        id: &str,
        written: &[(String, Vec<u8>)],
    ) -> Result<(), EdgeError> {
        match self.live.get(id) {
            Some(live) => {
                let mut files = live.files.clone();
                files.push((file_path(id), live.config.clone().into_bytes()));
                self.docker.put_files(container, &files).await?;
            }
            None => {
                let mut argv = vec!["rm".to_owned(), "-f".to_owned(), file_path(id)];
                argv.extend(written.iter().map(|(path, _)| path.clone()));
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                self.docker.exec(container, &argv).await?;
            }
        }
        Ok(())
    }

    /// Leaves the networks no live Proxy needs any more.
    async fn detach_unused(&mut self, container: &str) {
        let needed: BTreeSet<&String> = self.live.values().flat_map(|l| &l.networks).collect();
        // Proxies read back from a previous run have no known network yet: keep everything
        // until each was reconciled once.
        if self.live.values().any(|l| l.object.is_none()) {
            return;
        }
        let unused: Vec<String> = self
            .attached
            .iter()
            .filter(|n| !needed.contains(n))
            .cloned()
            .collect();
        for network in unused {
            let result = self.docker.disconnect(&network, container).await;
            let target = format!("network {network}");
            self.audit(
                None,
                "docker.network.disconnect",
                &target,
                &result.as_ref().map(|_| ()).map_err(ToString::to_string),
            )
            .await;
            match result {
                Ok(()) | Err(DockerError::NotFound(_)) => {
                    self.attached.remove(&network);
                }
                Err(error) => {
                    warn!(edge = %self.options.name, "cannot leave network {network}: {error}")
                }
            }
        }
    }

    async fn audit(
        &self,
        object: Option<&ObjectRef>,
        action: &str,
        target: &str,
        result: &Result<(), String>,
    ) {
        let object = object.cloned().unwrap_or_else(|| ObjectRef {
            kind: "Edge".to_owned(),
            namespace: None,
            name: self.options.name.clone(),
            uid: String::new(),
            generation: 0,
        });
        let (outcome, detail) = match result {
            Ok(()) => (Outcome::Success, String::new()),
            Err(error) => (Outcome::Failure, error.clone()),
        };
        let record = NewRecord {
            controller: CONTROLLER.to_owned(),
            object,
            action: action.to_owned(),
            target: target.to_owned(),
            outcome,
            detail,
        };
        if let Err(error) = self.audit.record(record).await {
            tracing::error!(%error, "could not write the audit record of an edge change");
        }
    }
}

#[cfg(test)]
mod tests;
