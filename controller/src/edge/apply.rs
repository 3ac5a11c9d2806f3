//! One batch applied as a transaction: a pure [`diff`] against what is live, then networks,
//! files, `nginx -t`, putting back each file nginx rejects until the rest passes, the audit
//! records, and one reload. Separate so the rules of a change (what is unchanged, written or
//! removed; what nginx's output means) can be read and tested without the actor around them.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{info, warn};

use super::actor::{Live, Owner};
use super::{CONF_DIR, EdgeError, Served, Wanted};
use crate::audit::ObjectRef;
use crate::docker::DockerError;
use crate::proxy::site;

pub(super) fn file_name(id: &str) -> String {
    format!("infrapilot-{id}.conf")
}

pub(super) fn file_path(id: &str) -> String {
    format!("{CONF_DIR}/{}", file_name(id))
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

/// The files a Proxy's wish writes: those its configuration refers to first, since `nginx -t`
/// loads them.
fn written_files(id: &str, wish: &Wanted) -> Vec<(String, Vec<u8>)> {
    let mut files = wish.files.clone();
    files.push((file_path(id), wish.config.clone().into_bytes()));
    files
}

/// The first of `among` whose configuration or files nginx's output names: a key that does
/// not match its certificate names the key file, not the site.
fn named(output: &str, among: &[String], writes: &BTreeMap<String, Wanted>) -> Option<String> {
    among
        .iter()
        .find(|id| {
            output.contains(&file_path(id))
                || writes.get(*id).is_some_and(|wish| {
                    wish.files
                        .iter()
                        .any(|(path, _)| output.contains(path.as_str()))
                })
        })
        .cloned()
}

/// nginx's message without the noise around it, for a condition.
pub(super) fn nginx_message(output: &str) -> String {
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

/// What a batch changes, against what is live.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Diff {
    /// Served already as wanted (configuration and files): only their networks and object
    /// are brought up to date, nothing is written.
    pub(super) unchanged: BTreeMap<String, Wanted>,
    /// New or changed: written, validated, and reloaded.
    pub(super) writes: BTreeMap<String, Wanted>,
    /// Live and no longer wanted: removed. A removal of what is not live is nothing to do.
    pub(super) removals: BTreeMap<String, ObjectRef>,
}

/// Sorts a batch (what each Proxy wants now, None: removal) against what is live. Pure: the
/// edge is neither read nor changed.
pub(super) fn diff(
    live: &BTreeMap<String, Live>,
    wanted: BTreeMap<String, (Option<Wanted>, ObjectRef)>,
) -> Diff {
    let mut diff = Diff::default();
    for (id, (wish, object)) in wanted {
        match wish {
            Some(wish) => {
                let unchanged = live
                    .get(&id)
                    .is_some_and(|l| l.config == wish.config && l.files == wish.files);
                if unchanged {
                    diff.unchanged.insert(id, wish);
                } else {
                    diff.writes.insert(id, wish);
                }
            }
            None if live.contains_key(&id) => {
                diff.removals.insert(id, object);
            }
            None => {}
        }
    }
    diff
}

impl Owner {
    /// Applies a batch to the running edge; returns what became of each Proxy's wish.
    pub(super) async fn apply(
        &mut self,
        wanted: BTreeMap<String, (Option<Wanted>, ObjectRef)>,
    ) -> Result<(BTreeMap<String, Served>, bool), EdgeError> {
        let container = self.container.clone().ok_or(EdgeError::Stopped)?;
        let mut outcomes = BTreeMap::new();
        let Diff {
            unchanged,
            mut writes,
            removals,
        } = diff(&self.live, wanted);
        for (id, wish) in unchanged {
            if let Some(live) = self.live.get_mut(&id) {
                live.networks = wish.networks;
                live.object = Some(wish.object);
            }
            outcomes.insert(id, Served::Serving);
        }
        // Networks first: nginx must be able to reach an upstream once it serves it.
        let mut joined = false;
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
                        joined = true;
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
        // Joining a user network switches the edge's DNS to Docker's embedded server.
        let resolver_changed = joined && self.write_resolver(&container).await?;
        if writes.is_empty() && removals.is_empty() && !resolver_changed {
            let reloaded = self.detach_unused(&container).await;
            return Ok((outcomes, reloaded));
        }

        let files: Vec<(String, Vec<u8>)> = writes
            .iter()
            .flat_map(|(id, wish)| written_files(id, wish))
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

        let (rejected, valid) = self.validate(&container, &writes).await?;

        let applied: Vec<String> = writes
            .keys()
            .filter(|id| !rejected.contains_key(*id))
            .cloned()
            .collect();
        // nginx refuses a reload it cannot load, and keeps what it serves; not asking is cleaner.
        let reload = valid && (!applied.is_empty() || !removals.is_empty() || resolver_changed);
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
        let reloaded = self.detach_unused(&container).await;
        Ok((outcomes, reload || reloaded))
    }

    /// Runs `nginx -t` until what is on disk passes, taking out each written Proxy nginx
    /// refuses; returns those Proxies with nginx's message about each one's own files, and
    /// whether what is left on disk passes.
    ///
    /// A file nginx names is put back at once: one test per bad file. nginx names none when
    /// the fault shows only once everything is loaded (a server-name hash too small, a clash
    /// between sites): then the batch is taken out and halved until each refused group is one
    /// Proxy, keeping every group that passes. Rejecting the whole batch instead would fail
    /// every Proxy of it with one Proxy's message, and the batch would meet again at every
    /// resync.
    pub(super) async fn validate(
        &self,
        container: &str,
        writes: &BTreeMap<String, Wanted>,
    ) -> Result<(BTreeMap<String, String>, bool), EdgeError> {
        let mut rejected = BTreeMap::new();
        // Written Proxies on disk now, neither accepted nor refused yet.
        let mut on_disk: Vec<String> = writes.keys().cloned().collect();
        loop {
            let test = self.docker.exec(container, &["nginx", "-t"]).await?;
            if test.exit_code == 0 {
                return Ok((rejected, true));
            }
            let message = nginx_message(&test.output);
            if let Some(id) = named(&test.output, &on_disk, writes) {
                self.restore(container, std::slice::from_ref(&id), writes)
                    .await?;
                on_disk.retain(|other| *other != id);
                rejected.insert(id, message);
                continue;
            }
            self.restore(container, &on_disk, writes).await?;
            let base = self.docker.exec(container, &["nginx", "-t"]).await?;
            if base.exit_code != 0 {
                // Invalid without any of this batch: nothing of it can be shown to be good.
                warn!(edge = %self.options.name, "the edge's configuration stays invalid: {}", nginx_message(&base.output));
                rejected.extend(on_disk.into_iter().map(|id| (id, message.clone())));
                return Ok((rejected, false));
            }
            warn!(edge = %self.options.name, suspects = on_disk.len(), "nginx rejected the batch without naming a site: halving it: {message}");
            // Groups still to try, on top of what passed; the first half is tried first.
            let mut groups = vec![on_disk];
            while let Some(group) = groups.pop() {
                self.put(container, &group, writes).await?;
                let test = self.docker.exec(container, &["nginx", "-t"]).await?;
                if test.exit_code == 0 {
                    continue;
                }
                self.restore(container, &group, writes).await?;
                let message = nginx_message(&test.output);
                let culprit = named(&test.output, &group, writes)
                    .or_else(|| (group.len() == 1).then(|| group[0].clone()));
                match culprit {
                    Some(id) => {
                        let rest: Vec<String> = group.into_iter().filter(|o| *o != id).collect();
                        if !rest.is_empty() {
                            groups.push(rest);
                        }
                        rejected.insert(id, message);
                    }
                    None => {
                        let mut first = group;
                        let second = first.split_off(first.len() / 2);
                        groups.push(second);
                        groups.push(first);
                    }
                }
            }
            return Ok((rejected, true));
        }
    }

    /// Writes the wanted files of `ids`.
    pub(super) async fn put(
        &self,
        container: &str,
        ids: &[String],
        writes: &BTreeMap<String, Wanted>,
    ) -> Result<(), EdgeError> {
        let files: Vec<(String, Vec<u8>)> = ids
            .iter()
            .filter_map(|id| writes.get(id).map(|wish| (id, wish)))
            .flat_map(|(id, wish)| written_files(id, wish))
            .collect();
        self.docker.put_files(container, &files).await?;
        Ok(())
    }

    /// Puts the files of `ids` back as they are live, or removes them when they were new.
    async fn restore(
        &self,
        container: &str,
        ids: &[String],
        writes: &BTreeMap<String, Wanted>,
    ) -> Result<(), EdgeError> {
        let mut files = Vec::new();
        let mut argv = vec!["rm".to_owned(), "-f".to_owned()];
        for id in ids {
            match self.live.get(id) {
                Some(live) => {
                    files.extend(live.files.iter().cloned());
                    files.push((file_path(id), live.config.clone().into_bytes()));
                }
                None => {
                    argv.push(file_path(id));
                    let written = writes
                        .get(id)
                        .map(|w| w.files.as_slice())
                        .unwrap_or_default();
                    argv.extend(written.iter().map(|(path, _)| path.clone()));
                }
            }
        }
        if !files.is_empty() {
            self.docker.put_files(container, &files).await?;
        }
        if argv.len() > 2 {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            self.docker.exec(container, &argv).await?;
        }
        Ok(())
    }

    /// Writes the resolver file from the edge's own `/etc/resolv.conf` when it says something
    /// else than the file; returns whether it wrote (nginx loads it at the next reload). Docker
    /// rewrites `/etc/resolv.conf` as the edge joins and leaves user networks, and nginx has no
    /// resolver of its own: URL upstreams named by host resolve through this one per request.
    pub(super) async fn write_resolver(&mut self, container: &str) -> Result<bool, EdgeError> {
        let read = self
            .docker
            .exec(container, &["cat", "/etc/resolv.conf"])
            .await?;
        if read.exit_code != 0 {
            warn!(edge = %self.options.name, "cannot read the edge's /etc/resolv.conf: {}", read.output.trim());
            return Ok(false);
        }
        let wanted = site::resolver_config(&read.output);
        if self.resolver.as_deref() == Some(wanted.as_str()) {
            return Ok(false);
        }
        let file = (site::RESOLVER_FILE.to_owned(), wanted.clone().into_bytes());
        self.docker.put_files(container, &[file]).await?;
        self.resolver = Some(wanted);
        Ok(true)
    }

    /// [`Owner::write_resolver`], then validates and reloads when it wrote; returns whether
    /// nginx was reloaded.
    pub(super) async fn refresh_resolver(&mut self, container: &str) -> Result<bool, EdgeError> {
        if !self.write_resolver(container).await? {
            return Ok(false);
        }
        let test = self.docker.exec(container, &["nginx", "-t"]).await?;
        if test.exit_code != 0 {
            warn!(edge = %self.options.name, "the edge's configuration is invalid: {}", nginx_message(&test.output));
            return Ok(false);
        }
        self.reload(container, "the resolver changed").await?;
        Ok(true)
    }

    /// Signals nginx to reload, with an audit record naming why: for reloads no Proxy's change
    /// asked for (the edge's own files).
    pub(super) async fn reload(&self, container: &str, why: &str) -> Result<(), EdgeError> {
        let result = self.docker.signal(container, "HUP").await;
        let target = format!("edge {}: {why}", self.options.name);
        self.audit(
            None,
            "nginx.reload",
            &target,
            &result.as_ref().map(|_| ()).map_err(ToString::to_string),
        )
        .await;
        Ok(result?)
    }

    /// Leaves the networks no live Proxy needs any more; returns whether nginx was reloaded
    /// (leaving the last user network changes the resolver).
    async fn detach_unused(&mut self, container: &str) -> bool {
        let needed: BTreeSet<&String> = self.live.values().flat_map(|l| &l.networks).collect();
        // Proxies read back from a previous run have no known network yet: keep everything
        // until each was reconciled once.
        if self.live.values().any(|l| l.object.is_none()) {
            return false;
        }
        let unused: Vec<String> = self
            .attached
            .iter()
            .filter(|n| !needed.contains(n))
            .cloned()
            .collect();
        let left = !unused.is_empty();
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
        if !left {
            return false;
        }
        match self.refresh_resolver(container).await {
            Ok(reloaded) => reloaded,
            Err(error) => {
                warn!(edge = %self.options.name, "cannot bring the resolver up to date: {error}");
                false
            }
        }
    }
}
