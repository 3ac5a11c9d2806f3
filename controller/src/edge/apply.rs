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
}
