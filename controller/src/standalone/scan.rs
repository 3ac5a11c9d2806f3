//! Reading the manifests into the store: the scan (off the async workers), the transition check,
//! the problems it reports, and the file watcher that calls for it.
//!
//! A scan never deletes by accident. What cannot be read (a missing manifest root, a directory
//! that cannot be listed, a symlink loop, a FIFO or an oversized file, a file caught mid-write,
//! an invalid document) is a problem with its path and reason, and every object read from there
//! before keeps its last good version ([`sync::Unread`]). An object whose file is gone or no
//! longer defines it is deleted only once a second scan, [`sync::DELETE_AFTER`] later, agrees;
//! the runtime asks for that scan at [`Scanner::recheck_at`]. Secrets read from manifests follow
//! the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use jiff::Timestamp;
use tracing::{debug, info, warn};

use super::store::Store;
use super::sync::{self, Change, Key, Missing, Place, Scanned, Unread, Verdict};
use crate::api::Kind;
use crate::manifest::read::{Limits, Parsed, read_tree_again};
use crate::manifest::{self, Object, Outcome, Problem};
use crate::secrets::{SecretMap, Secrets};

/// A Secret's data: key → value.
type SecretData = BTreeMap<String, Vec<u8>>;

/// Keeps the store, and the Secrets in memory, in step with the manifests.
#[derive(Debug)]
pub struct Scanner {
    roots: Vec<PathBuf>,
    store: Store,
    secrets: Arc<SecretMap>,
    watch: Watch,
    missing: Missing,
    /// The Secrets in effect, with the file each was read from; `None` before the first scan.
    secrets_read: Option<BTreeMap<Key, (String, SecretData)>>,
    missing_secrets: Missing,
    /// The problems of the last scan, to log only what changed; `None` before the first scan.
    problems: Option<Vec<Problem>>,
    /// Objects the last scan missed, to log when one starts or stops waiting for deletion.
    waiting: BTreeSet<Key>,
    /// Roots the last scan could not read: watched again once they are back.
    unreadable_roots: BTreeSet<PathBuf>,
    /// When the last scan started.
    last_scan: Option<Instant>,
    /// What each root's files came to at the last scan, so that unchanged files are not
    /// checked again.
    parsed: Vec<Parsed>,
}

/// What a scan changed.
#[derive(Debug, Default)]
pub struct Scan {
    /// Objects created, updated, revived or deleted: to reconcile.
    pub changed: Vec<Key>,
    /// The Secrets in effect changed (since an earlier scan): every object may care.
    pub secrets_changed: bool,
    /// Every object in the store once the scan's changes are in, in key order: what a resync
    /// queues, without reading the store once more.
    pub stored: Vec<Key>,
}

impl Scanner {
    /// Starts watching `roots`; each change below them sends a signal on `changed`.
    pub fn new(
        roots: Vec<PathBuf>,
        store: Store,
        secrets: Arc<SecretMap>,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> anyhow::Result<Scanner> {
        let watch = Watch::start(&roots, changed)?;
        Ok(Scanner {
            store,
            secrets,
            watch,
            missing: Missing::default(),
            secrets_read: None,
            missing_secrets: Missing::default(),
            problems: None,
            waiting: BTreeSet::new(),
            unreadable_roots: BTreeSet::new(),
            last_scan: None,
            parsed: roots.iter().map(|_| Parsed::default()).collect(),
            roots,
        })
    }

    /// When a scan must run to confirm (or call off) a deletion, if one waits. Never sooner
    /// than [`sync::DELETE_AFTER`] after the last scan: a scan that failed leaves its deletions
    /// waiting, and must not be retried in a tight loop.
    pub fn recheck_at(&self) -> Option<Instant> {
        let due = self
            .missing
            .recheck_at()
            .into_iter()
            .chain(self.missing_secrets.recheck_at())
            .min()?;
        Some(
            self.last_scan
                .map_or(due, |last| due.max(last + sync::DELETE_AFTER)),
        )
    }

    /// Reads the manifests and brings the store in line with them.
    pub async fn scan(&mut self) -> anyhow::Result<Scan> {
        self.last_scan = Some(Instant::now());
        let roots = self.roots.clone();
        let mut parsed = std::mem::take(&mut self.parsed);
        // Reading touches the file system, which may be slow or stuck (a network mount): never
        // on the async workers.
        let read = tokio::task::spawn_blocking(move || {
            let trees = roots
                .iter()
                .zip(&mut parsed)
                .map(|(root, parsed)| read_tree_again(root, Limits::default(), parsed))
                .collect::<Vec<_>>();
            (trees, parsed)
        })
        .await;
        let (trees, parsed) = match read {
            Ok(read) => read,
            Err(error) => {
                // Nothing is remembered of a read that stopped: the next reads every file.
                self.parsed = self.roots.iter().map(|_| Parsed::default()).collect();
                return Err(error).context("reading the manifests stopped");
            }
        };
        self.parsed = parsed;
        let now = Instant::now();

        let mut unread = Unread::default();
        let mut problems = Vec::new();
        let mut scanned = Vec::new();
        let mut secret_docs = Vec::new();
        let mut unreadable_roots = BTreeSet::new();
        for (root, tree) in self.roots.iter().zip(trees) {
            let root_name = root.display().to_string();
            for unreadable in tree.unreadable {
                if unreadable.path == root_name {
                    unreadable_roots.insert(root.clone());
                }
                unread.insert(&unreadable.path);
                problems.push(unreadable.problem);
            }
            for outcome in tree.outcomes {
                match outcome {
                    Outcome::Valid(m) => {
                        let key = |kind: &str| Key {
                            kind: kind.to_owned(),
                            namespace: m.namespace.clone().unwrap_or_default(),
                            name: m.name.clone(),
                        };
                        match m.object {
                            Object::Custom { kind, object } => scanned.push(Scanned {
                                key: key(kind.name()),
                                file: m.file,
                                line: m.line,
                                object,
                            }),
                            Object::Secret(secret) => {
                                let data: SecretData = secret
                                    .data
                                    .unwrap_or_default()
                                    .into_iter()
                                    .map(|(k, v)| (k, v.0))
                                    .collect();
                                secret_docs.push((key("Secret"), m.file, m.line, data));
                            }
                        }
                    }
                    Outcome::Skipped { .. } => {}
                    Outcome::Invalid(found) => {
                        for problem in &found {
                            unread.insert(&problem.file);
                        }
                        problems.extend(found);
                    }
                }
            }
        }
        for root in self.unreadable_roots.difference(&unreadable_roots) {
            // A root deleted and made again is a new directory: its old watch is gone.
            self.watch.rewatch(root);
        }
        self.unreadable_roots = unreadable_roots;

        let secrets_changed = self.take_secrets(&secret_docs, &unread, now, &mut problems);
        let index = self.store.index().await?;
        let mut plan = sync::plan(&index, &scanned, &unread, &mut self.missing, now, || {
            uuid::Uuid::new_v4().to_string()
        });
        problems.append(&mut plan.problems);
        self.check_transitions(&index, &mut plan, &mut problems)
            .await?;
        self.report(problems).await?;

        for key in &plan.held {
            debug!(object = %key, "kept at its last good version while its manifest has problems");
        }
        let waiting: BTreeSet<Key> = plan.waiting.iter().cloned().collect();
        for key in waiting.difference(&self.waiting) {
            info!(
                object = %key,
                "missing from the manifests: deleted if still missing in {} ms",
                sync::DELETE_AFTER.as_millis()
            );
        }
        let deleted: BTreeSet<&Key> = plan
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Delete { key } => Some(key),
                _ => None,
            })
            .collect();
        for key in self.waiting.difference(&waiting) {
            if !deleted.contains(key) {
                info!(object = %key, "back in the manifests: not deleted");
            }
        }
        self.waiting = waiting;
        // Deleted objects stay stored (`deleting`) until their reconciler lets them go.
        let mut stored: BTreeSet<Key> = index.into_keys().collect();

        let stamp = Timestamp::now();
        let mut changed = Vec::with_capacity(plan.changes.len());
        self.store
            .apply_all(&plan.changes, stamp)
            .await
            .with_context(|| {
                format!("storing {} changes from the manifests", plan.changes.len())
            })?;
        for change in &plan.changes {
            let (key, what) = match change {
                Change::Create { key, .. } => (key, "created"),
                Change::Update { key, .. } => (key, "updated"),
                Change::Revive { key, .. } => (key, "restored"),
                Change::Delete { key } => (key, "deleted from the manifests"),
            };
            info!(object = %key, "{what}");
            stored.insert(key.clone());
            changed.push(key.clone());
        }
        Ok(Scan {
            changed,
            secrets_changed,
            stored: stored.into_iter().collect(),
        })
    }

    /// Puts the scan's Secrets in effect, by the rules objects follow; returns whether the
    /// Secrets in effect changed since an earlier scan.
    fn take_secrets(
        &mut self,
        docs: &[(Key, String, u64, SecretData)],
        unread: &Unread,
        now: Instant,
        problems: &mut Vec<Problem>,
    ) -> bool {
        let before = self.secrets_read.take();
        let previous = before.clone().unwrap_or_default();
        let known: BTreeMap<&Key, &str> = previous
            .iter()
            .map(|(key, (file, _))| (key, file.as_str()))
            .collect();
        let places: Vec<Place<'_>> = docs
            .iter()
            .map(|(key, file, line, _)| Place {
                key,
                file,
                line: *line,
            })
            .collect();
        let (verdicts, found) =
            sync::judge(&known, &places, unread, &mut self.missing_secrets, now);
        problems.extend(found);
        let mut read = BTreeMap::new();
        for (key, verdict) in verdicts {
            let kept = match verdict {
                Verdict::Defined(i) => Some((docs[i].1.clone(), docs[i].3.clone())),
                Verdict::Held | Verdict::Waiting => previous.get(&key).cloned(),
                Verdict::Gone => None,
            };
            if let Some(kept) = kept {
                read.insert(key, kept);
            }
        }
        let in_effect = |read: &BTreeMap<Key, (String, SecretData)>| -> Secrets {
            read.iter()
                .map(|(key, (_, data))| ((key.namespace.clone(), key.name.clone()), data.clone()))
                .collect()
        };
        let now_in_effect = in_effect(&read);
        let changed = before.as_ref().map(in_effect) != Some(now_in_effect.clone());
        if changed {
            self.secrets.replace(now_in_effect);
        }
        self.secrets_read = Some(read);
        changed && before.is_some()
    }

    /// Checks spec changes against their stored version for the kind's transition rules
    /// (`oldSelf`: immutable fields), as the API server does on update. A refused change is
    /// taken out of the plan, so the object keeps its last good version, and reported.
    async fn check_transitions(
        &self,
        index: &BTreeMap<Key, sync::Stored>,
        plan: &mut sync::Plan,
        problems: &mut Vec<Problem>,
    ) -> anyhow::Result<()> {
        let mut kept = Vec::with_capacity(plan.changes.len());
        for change in plan.changes.drain(..) {
            if let Change::Update {
                key,
                generation,
                object,
                file,
                line,
            } = &change
                && let Some(kind) = Kind::from_name(&key.kind)
                && kind.has_transition_rules()
                && index
                    .get(key)
                    .is_some_and(|old| old.generation != *generation)
                && let Some(old) = self.store.get(key).await?
                && let Some(violation) =
                    manifest::schema::check(kind, &object.value(), Some(&old.object)).first()
            {
                problems.push(Problem {
                    file: file.clone(),
                    line: *line,
                    column: 1,
                    field: manifest::field_path(&violation.path),
                    reason: format!("{}; {key} keeps its current version", violation.reason),
                });
                plan.held.push(key.clone());
                continue;
            }
            kept.push(change);
        }
        plan.changes = kept;
        Ok(())
    }

    /// Logs and stores the scan's problems when they changed.
    async fn report(&mut self, problems: Vec<Problem>) -> anyhow::Result<()> {
        if self.problems.as_ref() == Some(&problems) {
            return Ok(());
        }
        for problem in &problems {
            warn!("{problem}");
        }
        if problems.is_empty() && self.problems.is_some() {
            info!("every manifest is valid again");
        }
        self.store.replace_problems(&problems).await?;
        self.problems = Some(problems);
        Ok(())
    }
}

/// Watches the manifest paths; every change below them sends a (coalesced) signal.
#[derive(Debug)]
struct Watch {
    watcher: notify::RecommendedWatcher,
}

/// The events about one manifest path the watcher passes on.
#[derive(Debug)]
struct Interest {
    /// Everything below this directory root.
    below: Option<PathBuf>,
    /// The root itself as its parent's watch names it: created, removed or renamed.
    itself: Option<PathBuf>,
}

impl Interest {
    /// Events name paths as notify watches them: relative ones joined to the working
    /// directory.
    fn new(cwd: &Path, root: &Path, is_dir: bool) -> Interest {
        let absolute = cwd.join(root);
        Interest {
            below: is_dir.then(|| absolute.clone()),
            itself: Some(absolute),
        }
    }

    fn matches(&self, path: &Path) -> bool {
        self.below
            .as_deref()
            .is_some_and(|dir| path.starts_with(dir))
            || self.itself.as_deref() == Some(path)
    }
}

/// The directory `path` is in, if it has a name there.
fn parent_of(path: &Path) -> Option<PathBuf> {
    path.file_name()?;
    Some(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned),
    )
}

impl Watch {
    fn start(roots: &[PathBuf], changed: tokio::sync::mpsc::Sender<()>) -> anyhow::Result<Watch> {
        use notify::Watcher as _;
        let cwd = std::env::current_dir().context("cannot watch the manifests")?;
        let interests: Vec<Interest> = roots
            .iter()
            .map(|root| Interest::new(&cwd, root, root.is_dir()))
            .collect();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = event.is_ok_and(|e| {
                    !e.kind.is_access()
                        && e.paths
                            .iter()
                            .any(|p| interests.iter().any(|i| i.matches(p)))
                });
                if relevant {
                    // A full channel already holds a pending signal: nothing is lost.
                    let _ = changed.try_send(());
                }
            })
            .context("cannot watch the manifests")?;
        for root in roots {
            let parent = parent_of(root);
            if root.is_dir() {
                watcher
                    .watch(root, notify::RecursiveMode::Recursive)
                    .with_context(|| format!("cannot watch {}", root.display()))?;
                // The directory's parent too, to notice the directory itself come back after a
                // rename or a removal; without it that waits for the resync.
                if let Some(parent) = parent
                    && let Err(error) = watcher.watch(&parent, notify::RecursiveMode::NonRecursive)
                {
                    warn!(
                        "cannot watch {} for {} coming and going: {error}",
                        parent.display(),
                        root.display()
                    );
                }
            } else {
                // Editors replace files rather than writing them in place: watch a file's
                // directory.
                let parent = parent.unwrap_or_else(|| PathBuf::from("."));
                watcher
                    .watch(&parent, notify::RecursiveMode::NonRecursive)
                    .with_context(|| format!("cannot watch {}", parent.display()))?;
            }
        }
        Ok(Watch { watcher })
    }

    /// Watches a directory root again, once it is back.
    fn rewatch(&mut self, root: &Path) {
        use notify::Watcher as _;
        if !root.is_dir() {
            return;
        }
        match self.watcher.watch(root, notify::RecursiveMode::Recursive) {
            Ok(()) => debug!(root = %root.display(), "watching the manifests again"),
            Err(error) => warn!(
                "cannot watch {} again, changes there wait for the resync: {error}",
                root.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watcher_passes_on_what_is_below_a_root_and_the_root_itself_only() {
        let cwd = Path::new("/srv/ip");
        let dir = Interest::new(cwd, Path::new("manifests"), true);
        assert!(dir.matches(Path::new("/srv/ip/manifests/ops.yaml")));
        assert!(dir.matches(Path::new("/srv/ip/manifests/team/ops.yaml")));
        assert!(dir.matches(Path::new("/srv/ip/manifests")));
        // The parent's watch names it through the parent as given: `./manifests`.
        assert!(dir.matches(&cwd.join(".").join("manifests")));
        assert!(!dir.matches(Path::new("/srv/ip/infrapilot.log")));
        assert!(!dir.matches(Path::new("/srv/ip/manifests.away")));

        let file = Interest::new(cwd, Path::new("/etc/ip/ops.yaml"), false);
        assert!(file.matches(Path::new("/etc/ip/ops.yaml")));
        assert!(!file.matches(Path::new("/etc/ip/other.yaml")));
    }
}
