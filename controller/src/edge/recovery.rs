//! Finding the edge again: making sure the container exists and runs, learning what an edge
//! that survived an operator restart serves (so nothing identical is written or reloaded
//! again), reloading once when it holds files nginx never loaded, and creating it with
//! everything live when it is gone. Separate because it is the only part that trusts nothing
//! it did not read back from Docker.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::actor::{Live, Owner};
use super::apply::{file_path, nginx_message, rejected_id};
use super::{CONF_DIR, EdgeError, MANAGED_BY, MANAGED_BY_VALUE, SPEC_LABEL, Wanted};
use crate::audit::ObjectRef;
use crate::docker::NewContainer;
use crate::proxy::site;

const COMPONENT: &str = "infrapilot.io/component";
pub(super) const EDGE_FILE: &str = "infrapilot-00-edge.conf";
/// Written after every reload: the digest of the Proxy files nginx then loaded. An operator
/// killed between writing files and reloading leaves files on disk that nginx never loaded;
/// a digest that does not match tells the next operator to validate and reload once.
pub(super) const APPLIED_MARKER: &str = "/etc/nginx/infrapilot/applied";

/// The digest of what is live: every Proxy's configuration and files.
pub(super) fn digest(live: &BTreeMap<String, Live>) -> String {
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

impl Owner {
    /// Makes sure the edge container exists and runs: finds it (learning what it serves when
    /// it ran before this process), or creates it with everything that is live.
    pub(super) async fn ensure_running(
        &mut self,
        trigger: Option<ObjectRef>,
    ) -> Result<(), EdgeError> {
        let name = self.options.name.clone();
        match self.docker.container(&name).await? {
            Some(found)
                if found.labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) =>
            {
                Err(EdgeError::NameTaken(name))
            }
            Some(found)
                if found.running
                    && found.labels.get(SPEC_LABEL) != Some(&self.options.spec_digest()) =>
            {
                // Made by an earlier release or with other flags (the image, the ports, the log
                // rotation): recreated once, serving what it served.
                if !self.seeded {
                    self.seed(&found.id, &found.networks).await?;
                }
                warn!(edge = %self.options.name, "the edge was made with another image, ports or log rotation: recreating it with every Proxy it serves");
                self.docker.remove(&found.id).await?;
                self.container = None;
                self.create(trigger).await
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
        let mut edge_file_current = false;
        for (name, content) in self.docker.read_files(id, CONF_DIR).await? {
            if name == EDGE_FILE {
                edge_file_current = content == site::edge_config().into_bytes();
                continue;
            }
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
        let state = self
            .docker
            .read_files(id, APPLIED_MARKER.rsplit_once('/').map_or("/", |(d, _)| d))
            .await?;
        let file = |path: &str| {
            state
                .iter()
                .find(|(name, _)| path.ends_with(&format!("/{name}")))
                .map(|(_, content)| String::from_utf8_lossy(content).into_owned())
        };
        let marker = file(APPLIED_MARKER).map(|m| m.trim().to_owned());
        self.resolver = file(site::RESOLVER_FILE);
        if !edge_file_current {
            // An edge made by another version of the operator: its own part (default servers,
            // hash sizes) is brought up to date like a Proxy's file, validated and reloaded.
            warn!(edge = %self.options.name, "the edge's own configuration is not this version's: rewriting it, validating and reloading once");
            let file = (
                format!("{CONF_DIR}/{EDGE_FILE}"),
                site::edge_config().into_bytes(),
            );
            self.docker.put_files(id, &[file]).await?;
            self.resync(id).await?;
        } else if marker.as_deref() != Some(digest(&self.live).as_str()) {
            warn!(edge = %self.options.name, "the edge holds files it never loaded (an operator stopped mid-change): validating and reloading once");
            self.resync(id).await?;
        }
        self.attached = networks
            .iter()
            .map(|a| a.network.clone())
            .filter(|n| n != "bridge")
            .collect();
        // An edge of an earlier version has no resolver file; one whose networks changed while
        // no operator ran has a stale one.
        self.refresh_resolver(id).await?;
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
        self.reload(container, "files on disk it had not loaded")
            .await?;
        self.write_marker(container).await
    }

    pub(super) async fn write_marker(&self, container: &str) -> Result<(), EdgeError> {
        let marker = (APPLIED_MARKER.to_owned(), digest(&self.live).into_bytes());
        self.docker.put_files(container, &[marker]).await?;
        Ok(())
    }

    async fn create(&mut self, trigger: Option<ObjectRef>) -> Result<(), EdgeError> {
        let mut labels = self.options.labels.clone();
        labels.insert(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned());
        labels.insert(COMPONENT.to_owned(), "edge".to_owned());
        labels.insert(SPEC_LABEL.to_owned(), self.options.spec_digest());
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
        ];
        // nginx starts with the edge's own files only, so it always starts, whatever a Proxy's
        // file holds now; the Proxies' files follow, validated like any batch.
        let sites = std::mem::take(&mut self.live);
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
            log: Some(self.options.log.clone()),
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
        // Docker writes /etc/resolv.conf as the container starts and joins networks: only now
        // can the resolver be known.
        self.resolver = None;
        self.write_resolver(&id).await?;
        self.restore_sites(&id, sites).await
    }

    /// Puts every Proxy that was live back into a new edge: the files nginx refuses (a TLS pair
    /// swapped on disk, say) are found as in any batch and left out, and the rest is loaded in
    /// one reload. A Proxy left out is logged and audited here, and sent to its reconciler,
    /// which applies it again and so reports nginx's message in its status.
    async fn restore_sites(
        &mut self,
        container: &str,
        sites: BTreeMap<String, Live>,
    ) -> Result<(), EdgeError> {
        let edge = ObjectRef {
            kind: "Edge".to_owned(),
            namespace: None,
            name: self.options.name.clone(),
            uid: String::new(),
            generation: 0,
        };
        let writes: BTreeMap<String, Wanted> = sites
            .iter()
            .map(|(id, live)| {
                let wanted = Wanted {
                    id: id.clone(),
                    object: live.object.clone().unwrap_or_else(|| edge.clone()),
                    config: live.config.clone(),
                    networks: live.networks.clone(),
                    files: live.files.clone(),
                };
                (id.clone(), wanted)
            })
            .collect();
        let ids: Vec<String> = writes.keys().cloned().collect();
        if !ids.is_empty() {
            self.put(container, &ids, &writes).await?;
        }
        let (rejected, valid) = self.validate(container, &writes).await?;
        for (id, message) in &rejected {
            warn!(edge = %self.options.name, proxy = %id, "left out of the new edge: nginx refuses its files: {message}");
            let target = format!(
                "edge {}: conf.d/{}",
                self.options.name,
                super::apply::file_name(id)
            );
            let object = sites.get(id).and_then(|l| l.object.as_ref());
            self.audit(object, "nginx.config.apply", &target, &Err(message.clone()))
                .await;
        }
        let left_out: Vec<ObjectRef> = rejected
            .keys()
            .filter_map(|id| sites.get(id).and_then(|l| l.object.clone()))
            .collect();
        self.live = sites
            .into_iter()
            .filter(|(id, _)| !rejected.contains_key(id))
            .collect();
        if valid {
            self.reload(container, "created with every Proxy").await?;
            self.write_marker(container).await?;
        }
        // After the reload: reconciled again, each is then no longer live and is applied anew.
        for object in left_out {
            let _ = self.left_out.send(object);
        }
        Ok(())
    }
}
