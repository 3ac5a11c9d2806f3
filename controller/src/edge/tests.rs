use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::actor::Live;
use super::apply::{Diff, diff, file_path, nginx_message};
use super::recovery::{APPLIED_MARKER, EDGE_FILE, digest};
use super::*;
use crate::audit::ObjectRef;
use crate::docker::{Docker, DockerError, NewContainer};
use crate::reconcile::tests_support::MemoryDocker;

#[test]
fn the_rejected_proxy_is_found_in_nginx_output() {
    let output = "nginx: [emerg] invalid burst value \"burst=0\" in /etc/nginx/conf.d/infrapilot-p1bd80a.conf:13\n\
                  nginx: configuration file /etc/nginx/nginx.conf test failed\n";
    assert_eq!(rejected_id(output).as_deref(), Some("p1bd80a"));
    assert_eq!(
        rejected_id("[emerg] in /etc/nginx/conf.d/infrapilot-00-edge.conf:3"),
        None
    );
    assert_eq!(rejected_id("[emerg] in /etc/nginx/nginx.conf:3"), None);
}

#[test]
fn nginx_messages_lose_timestamps_and_process_ids() {
    let output = "2026/11/22 05:28:16 [emerg] 18#18: invalid burst value \"burst=0\" in /etc/nginx/conf.d/infrapilot-p1.conf:13\n\
                  nginx: configuration file /etc/nginx/nginx.conf test failed\n";
    assert_eq!(
        nginx_message(output),
        "[emerg] invalid burst value \"burst=0\" in /etc/nginx/conf.d/infrapilot-p1.conf:13"
    );
}

fn live(config: &str) -> Live {
    Live {
        config: config.to_owned(),
        networks: Vec::new(),
        files: Vec::new(),
        object: None,
    }
}

#[test]
fn the_diff_writes_what_changed_and_leaves_what_is_served_already() {
    let live = BTreeMap::from([
        ("psame".to_owned(), live("server same")),
        ("pchanged".to_owned(), live("server old")),
    ]);
    let mut same = wanted("psame", "server same");
    same.networks = vec!["backend".to_owned()];
    let changed = wanted("pchanged", "server new");
    let new = wanted("pnew", "server new");
    let batch = [&same, &changed, &new]
        .into_iter()
        .map(|w| (w.id.clone(), (Some(w.clone()), w.object.clone())))
        .collect();
    assert_eq!(
        diff(&live, batch),
        Diff {
            unchanged: BTreeMap::from([("psame".to_owned(), same)]),
            writes: BTreeMap::from([("pchanged".to_owned(), changed), ("pnew".to_owned(), new),]),
            removals: BTreeMap::new(),
        }
    );
}

#[test]
fn the_diff_removes_only_what_is_live() {
    let live = BTreeMap::from([("plive".to_owned(), live("server live"))]);
    let gone = wanted("plive", "").object;
    let never = wanted("pnever", "").object;
    let batch = BTreeMap::from([
        ("plive".to_owned(), (None, gone.clone())),
        ("pnever".to_owned(), (None, never)),
    ]);
    assert_eq!(
        diff(&live, batch),
        Diff {
            removals: BTreeMap::from([("plive".to_owned(), gone)]),
            ..Diff::default()
        }
    );
}

fn options() -> EdgeOptions {
    EdgeOptions {
        name: "edge".to_owned(),
        image: "nginx".to_owned(),
        address: "127.0.0.1".to_owned(),
        http_port: 8080,
        https_port: 8443,
        labels: BTreeMap::new(),
        check_interval: Duration::from_secs(3600),
        log: crate::edge::LogRotation {
            max_size: "10m".to_owned(),
            max_files: 3,
        },
    }
}

/// The labels of an edge this version made with [`options`].
fn current_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
        ("infrapilot.io/component".to_owned(), "edge".to_owned()),
        (SPEC_LABEL.to_owned(), options().spec_digest()),
    ])
}

fn edge(docker: Arc<dyn Docker>) -> Edge {
    let audit = Arc::new(crate::reconcile::tests_support::Recorder::default());
    Edge::start(docker, options(), audit)
}

fn wanted(id: &str, config: &str) -> Wanted {
    Wanted {
        id: id.to_owned(),
        object: ObjectRef {
            kind: "Proxy".to_owned(),
            namespace: Some("default".to_owned()),
            name: id.to_owned(),
            uid: id.to_owned(),
            generation: 1,
        },
        config: config.to_owned(),
        networks: Vec::new(),
        files: Vec::new(),
    }
}

#[tokio::test]
async fn changes_arriving_together_share_one_reload_and_an_unchanged_one_costs_nothing() {
    let docker = Arc::new(MemoryDocker::default());
    let edge = edge(docker.clone());
    let applies = (0..10).map(|i| edge.apply(wanted(&format!("p{i}"), &format!("server {i}"))));
    let results = futures::future::join_all(applies).await;
    assert!(
        results.iter().all(|r| r == &Ok(Served::Serving)),
        "{results:?}"
    );
    let (uploads, signals) = {
        let state = docker.state.lock().unwrap();
        (state.uploads, state.signals)
    };
    assert!(signals <= 2, "{signals} reloads for one burst");

    // The same configuration again: no write, no reload.
    assert_eq!(
        edge.apply(wanted("p3", "server 3")).await,
        Ok(Served::Serving)
    );
    let state = docker.state.lock().unwrap();
    assert_eq!((state.uploads, state.signals), (uploads, signals));
}

#[tokio::test]
async fn a_rejected_file_is_taken_out_and_the_others_are_served() {
    let docker = Arc::new(MemoryDocker::default());
    let edge = edge(docker.clone());
    assert_eq!(
        edge.apply(wanted("pgood", "server good")).await,
        Ok(Served::Serving)
    );
    let (good, bad) = futures::future::join(
        edge.apply(wanted("pgood", "server good v2")),
        edge.apply(wanted("pbad", "BAD")),
    )
    .await;
    assert_eq!(good, Ok(Served::Serving));
    match bad {
        Ok(Served::Rejected(message)) => {
            assert!(message.contains("unknown directive"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let state = docker.state.lock().unwrap();
    assert!(
        !state.files.contains_key(&file_path("pbad")),
        "the rejected file is removed"
    );
    assert_eq!(
        state.files.get(&file_path("pgood")).map(Vec::as_slice),
        Some(&b"server good v2"[..])
    );
    // What nginx loaded is recorded for the next operator.
    assert!(state.files.contains_key(APPLIED_MARKER));
}

#[tokio::test]
async fn a_fault_that_names_no_file_fails_only_the_proxies_that_cause_it() {
    let docker = Arc::new(MemoryDocker::default());
    let edge = edge(docker.clone());
    assert_eq!(
        edge.apply(wanted("plive", "server live")).await,
        Ok(Served::Serving)
    );
    let tests_before = docker.state.lock().unwrap().tests;
    // Twelve changes at once: two that nginx refuses without naming them, one it names, and
    // a change of the live one.
    let config = |i: usize| match i {
        3 | 8 => format!("server {i} HASH"),
        5 => format!("server {i} BAD"),
        _ => format!("server {i}"),
    };
    let applies = (0..12)
        .map(|i| edge.apply(wanted(&format!("p{i:02}"), &config(i))))
        .chain([edge.apply(wanted("plive", "server live v2"))]);
    let results = futures::future::join_all(applies).await;
    for (i, result) in results.iter().enumerate() {
        let expected = match i {
            3 | 8 => "server_names_hash",
            5 => "unknown directive",
            _ => {
                assert_eq!(result, &Ok(Served::Serving), "change {i}");
                continue;
            }
        };
        match result {
            Ok(Served::Rejected(message)) => {
                assert!(message.contains(expected), "change {i}: {message}")
            }
            other => panic!("change {i}: {other:?}"),
        }
    }
    let state = docker.state.lock().unwrap();
    for i in [3, 5, 8] {
        assert!(!state.files.contains_key(&file_path(&format!("p{i:02}"))));
    }
    assert_eq!(
        state.files.get(&file_path("p11")).map(Vec::as_slice),
        Some(&b"server 11"[..])
    );
    assert_eq!(
        state.files.get(&file_path("plive")).map(Vec::as_slice),
        Some(&b"server live v2"[..])
    );
    // Halving, not one test per change: the changes may have come in one batch or two.
    let tests = state.tests - tests_before;
    assert!(tests <= 24, "{tests} runs of nginx -t");
}

#[tokio::test]
async fn one_fault_naming_no_file_in_a_large_batch_costs_a_few_tests_not_one_per_change() {
    let docker = Arc::new(MemoryDocker::default());
    let edge = edge(docker.clone());
    let applies = (0..64).map(|i| {
        let config = if i == 41 {
            "server HASH".to_owned()
        } else {
            format!("server {i}")
        };
        edge.apply(wanted(&format!("p{i:02}"), &config))
    });
    let results = futures::future::join_all(applies).await;
    let rejected: Vec<usize> = (0..64)
        .filter(|i| matches!(results[*i], Ok(Served::Rejected(_))))
        .collect();
    assert_eq!(rejected, vec![41], "{results:?}");
    let tests = docker.state.lock().unwrap().tests;
    // Halving 63 changes down to one: two tests per level, six levels, and a few around.
    assert!(tests <= 20, "{tests} runs of nginx -t for 64 changes");
}

#[tokio::test]
async fn a_recreated_edge_starts_and_leaves_out_only_the_files_nginx_refuses() {
    let docker = Arc::new(MemoryDocker::default());
    // An edge from an earlier run serving two Proxies.
    let live = |config: &str| Live {
        config: config.to_owned(),
        networks: Vec::new(),
        files: Vec::new(),
        object: None,
    };
    let sites = BTreeMap::from([
        ("pbad".to_owned(), live("server refused-later")),
        ("pgood".to_owned(), live("server good")),
    ]);
    {
        let mut state = docker.state.lock().unwrap();
        state.created = 1;
        state.edge_labels = current_labels();
        state.files = BTreeMap::from([
            (
                format!("{CONF_DIR}/{EDGE_FILE}"),
                crate::proxy::site::edge_config().into_bytes(),
            ),
            (file_path("pbad"), b"server refused-later".to_vec()),
            (file_path("pgood"), b"server good".to_vec()),
            (APPLIED_MARKER.to_owned(), digest(&sites).into_bytes()),
        ]);
    }
    let edge = edge(docker.clone());
    let mut left_out = edge
        .left_out()
        .expect("the edge tells which Proxies it leaves out");
    assert!(edge.left_out().is_none(), "taken once");
    assert_eq!(
        edge.apply(wanted("pone", "server one")).await,
        Ok(Served::Serving)
    );
    // Applied by this operator, so the edge knows whose it is.
    assert_eq!(
        edge.apply(wanted("pmine", "server mine refused-later"))
            .await,
        Ok(Served::Serving)
    );
    assert!(
        docker
            .state
            .lock()
            .unwrap()
            .files
            .contains_key(&file_path("pbad"))
    );

    // The edge stops, and what nginx accepts changes (a new image): the next change recreates
    // it, and one of the Proxies no longer passes.
    {
        let mut state = docker.state.lock().unwrap();
        state.edge_stopped = true;
        state.refuse = Some("refused-later".to_owned());
    }
    assert_eq!(
        edge.apply(wanted("ptwo", "server two")).await,
        Ok(Served::Serving)
    );
    {
        let state = docker.state.lock().unwrap();
        assert_eq!(state.created, 1, "recreated once");
        for id in ["pgood", "pone", "ptwo"] {
            assert!(state.files.contains_key(&file_path(id)), "{id} is served");
        }
        for id in ["pbad", "pmine"] {
            assert!(
                !state.files.contains_key(&file_path(id)),
                "{id} is left out"
            );
        }
        assert!(state.signals >= 1);
    }
    // The Proxy it knows is sent to its reconciler at once; the one found on disk after a
    // restart has no known owner and is reported when its Proxy is next reconciled.
    let sent = left_out
        .try_recv()
        .expect("the left-out Proxy is sent back");
    assert_eq!(sent.name, "pmine");
    assert!(left_out.try_recv().is_err(), "only the Proxies left out");
}

#[tokio::test]
async fn a_same_named_container_it_did_not_create_is_never_touched() {
    /// Docker with a foreign container where the edge would be.
    struct Foreign(MemoryDocker);

    #[async_trait]
    impl Docker for Foreign {
        async fn container(
            &self,
            _name: &str,
        ) -> Result<Option<crate::docker::ContainerFacts>, DockerError> {
            Ok(Some(crate::docker::ContainerFacts {
                id: "theirs".to_owned(),
                name: "edge".to_owned(),
                running: true,
                ..Default::default()
            }))
        }
        async fn containers_with_labels(
            &self,
            l: &BTreeMap<String, String>,
        ) -> Result<Vec<crate::docker::ContainerFacts>, DockerError> {
            self.0.containers_with_labels(l).await
        }
        async fn container_states(
            &self,
        ) -> Result<Vec<crate::docker::ContainerState>, DockerError> {
            self.0.container_states().await
        }
        async fn network(
            &self,
            n: &str,
        ) -> Result<Option<crate::docker::NetworkFacts>, DockerError> {
            self.0.network(n).await
        }
        async fn create(&self, c: &NewContainer) -> Result<String, DockerError> {
            self.0.create(c).await
        }
        async fn remove(&self, c: &str) -> Result<(), DockerError> {
            panic!("removed {c}, which InfraPilot did not create")
        }
        async fn connect(&self, n: &str, c: &str) -> Result<(), DockerError> {
            self.0.connect(n, c).await
        }
        async fn disconnect(&self, n: &str, c: &str) -> Result<(), DockerError> {
            self.0.disconnect(n, c).await
        }
        async fn put_files(&self, c: &str, f: &[(String, Vec<u8>)]) -> Result<(), DockerError> {
            self.0.put_files(c, f).await
        }
        async fn read_files(
            &self,
            c: &str,
            d: &str,
        ) -> Result<Vec<(String, Vec<u8>)>, DockerError> {
            self.0.read_files(c, d).await
        }
        async fn exec(
            &self,
            c: &str,
            a: &[&str],
        ) -> Result<crate::docker::ExecOutput, DockerError> {
            self.0.exec(c, a).await
        }
        async fn signal(&self, c: &str, s: &str) -> Result<(), DockerError> {
            self.0.signal(c, s).await
        }
        fn events(
            &self,
        ) -> futures::stream::BoxStream<'static, Result<crate::docker::ContainerEvent, DockerError>>
        {
            self.0.events()
        }
        fn output(
            &self,
            container: &str,
            since: jiff::Timestamp,
            follow: bool,
        ) -> futures::stream::BoxStream<'static, Result<crate::docker::LogLine, DockerError>>
        {
            self.0.output(container, since, follow)
        }
    }

    let docker = Arc::new(Foreign(MemoryDocker::default()));
    let edge = edge(docker.clone());
    assert_eq!(
        edge.apply(wanted("p1", "server 1")).await,
        Err(EdgeError::NameTaken("edge".to_owned()))
    );
    let state = docker.0.state.lock().unwrap();
    assert_eq!((state.created, state.uploads, state.signals), (0, 0, 0));
}

#[tokio::test]
async fn an_edge_made_by_an_earlier_release_is_recreated_once_with_log_rotation_and_its_sites() {
    let docker = Arc::new(MemoryDocker::default());
    let sites = BTreeMap::from([(
        "pold".to_owned(),
        Live {
            config: "server old".to_owned(),
            networks: Vec::new(),
            files: Vec::new(),
            object: None,
        },
    )]);
    {
        // Running, InfraPilot's, without the spec label: made before the edge logged to its
        // output with rotation.
        let mut state = docker.state.lock().unwrap();
        state.created = 1;
        state.edge_labels = BTreeMap::from([(MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned())]);
        state.files = BTreeMap::from([
            (
                format!("{CONF_DIR}/{EDGE_FILE}"),
                crate::proxy::site::edge_config().into_bytes(),
            ),
            (file_path("pold"), b"server old".to_vec()),
            (APPLIED_MARKER.to_owned(), digest(&sites).into_bytes()),
        ]);
    }
    let edge = edge(docker.clone());
    assert_eq!(
        edge.apply(wanted("pnew", "server new")).await,
        Ok(Served::Serving)
    );
    {
        let state = docker.state.lock().unwrap();
        assert_eq!(state.created, 1, "removed and created once");
        assert_eq!(state.edge_labels, current_labels());
        assert_eq!(state.edge_log, Some(options().log));
        for id in ["pold", "pnew"] {
            assert!(state.files.contains_key(&file_path(id)), "{id} is served");
        }
    }
    // Now current: the next change is applied to the same container.
    assert_eq!(
        edge.apply(wanted("pthird", "server third")).await,
        Ok(Served::Serving)
    );
    assert_eq!(
        docker.state.lock().unwrap().removed,
        1,
        "not recreated again"
    );
}
