//! `infrapilot run`: the operator, in standalone mode (`--manifests`) or against a cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::state::StateArgs;
use crate::edge::EdgeOptions;
use crate::kubernetes::leader::LeaseOptions;
use crate::kubernetes::runtime as kubernetes;
use crate::runtime::services::ServiceOptions;
use crate::standalone::runtime as standalone;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files or directories to reconcile without a cluster (standalone mode). Every
    /// `*.yaml` / `*.yml` below a directory is read and watched for changes. Repeatable.
    /// Without it, the operator runs against the cluster of KUBECONFIG, ~/.kube/config or
    /// its pod's service account.
    #[arg(
        long = "manifests",
        env = "INFRAPILOT_MANIFESTS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub manifests: Vec<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// The audit log's HMAC key file, generated on first start [default: STATE_DIR/audit.key].
    /// In a cluster, mount it from a Secret so that every replica signs with the same key.
    #[arg(long, env = "INFRAPILOT_AUDIT_KEY", value_name = "FILE")]
    pub audit_key: Option<PathBuf>,
    /// How often every object is reconciled again even when nothing changed.
    #[arg(long, env = "INFRAPILOT_RESYNC", default_value = "10m", value_parser = parse_duration)]
    pub resync: Duration,
    /// How long one notification delivery may take.
    #[arg(long, env = "INFRAPILOT_DELIVERY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub delivery_timeout: Duration,
    /// Where to serve /livez, /readyz and /metrics [default: 0.0.0.0:8080 against a cluster;
    /// not served in standalone mode unless given].
    #[arg(long, env = "INFRAPILOT_PROBE_ADDRESS", value_name = "ADDRESS:PORT")]
    pub probe_address: Option<SocketAddr>,
    /// Where backup validation reports are written, as
    /// `DIR/<namespace>/<policy>/<run>.json` and `.html` [default: STATE_DIR/reports].
    #[arg(long, env = "INFRAPILOT_REPORTS_DIR", value_name = "DIR")]
    pub reports_dir: Option<PathBuf>,
    /// How many backup validations run at once, across policies; the others wait their turn
    /// (each runs a throwaway PostgreSQL server).
    #[arg(long, env = "INFRAPILOT_MAX_RESTORES", value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_restores: u16,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The edge: the nginx container the operator runs in front of every Proxy's upstream.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "The edge (nginx)")]
pub struct EdgeArgs {
    /// The edge container's name. A container of that name that InfraPilot did not create is
    /// never touched.
    #[arg(long, env = "INFRAPILOT_EDGE_NAME", default_value = "infrapilot-edge")]
    pub edge_name: String,
    /// The edge's image: the official nginx image or one following its contract (conf.d
    /// included from nginx.conf, `nginx -g 'daemon off;'`).
    #[arg(long, env = "INFRAPILOT_EDGE_IMAGE", default_value = "nginx:1.27")]
    pub edge_image: String,
    /// The host address the edge's ports are published on.
    #[arg(long, env = "INFRAPILOT_EDGE_ADDRESS", default_value = "0.0.0.0")]
    pub edge_address: String,
    /// The host port of plain HTTP.
    #[arg(long, env = "INFRAPILOT_EDGE_HTTP_PORT", default_value_t = 80)]
    pub edge_http_port: u16,
    /// The host port of HTTPS.
    #[arg(long, env = "INFRAPILOT_EDGE_HTTPS_PORT", default_value_t = 443)]
    pub edge_https_port: u16,
    /// Extra labels on the edge container, as KEY=VALUE. Repeatable.
    #[arg(long = "edge-label", env = "INFRAPILOT_EDGE_LABELS", value_delimiter = ',', value_parser = parse_label, value_name = "KEY=VALUE")]
    pub edge_labels: Vec<(String, String)>,
    /// How often the edge is checked and, when it is gone, recreated with every Proxy.
    #[arg(long, env = "INFRAPILOT_EDGE_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub edge_check_interval: Duration,
    /// The most the edge's output (every Proxy's access log) takes in one file before Docker
    /// rotates it: a number with k, m or g.
    #[arg(long, env = "INFRAPILOT_EDGE_LOG_MAX_SIZE", default_value = "10m", value_parser = parse_log_size)]
    pub edge_log_max_size: String,
    /// How many rotated files of the edge's output Docker keeps.
    #[arg(long, env = "INFRAPILOT_EDGE_LOG_MAX_FILES", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub edge_log_max_files: u32,
}

impl EdgeArgs {
    pub fn options(&self) -> EdgeOptions {
        EdgeOptions {
            name: self.edge_name.clone(),
            image: self.edge_image.clone(),
            address: self.edge_address.clone(),
            http_port: self.edge_http_port,
            https_port: self.edge_https_port,
            labels: self.edge_labels.iter().cloned().collect(),
            check_interval: self.edge_check_interval,
            log: crate::edge::LogRotation {
                max_size: self.edge_log_max_size.clone(),
                max_files: self.edge_log_max_files,
            },
        }
    }
}

/// A size as Docker's `json-file` driver takes it (`max-size`): digits, then k, m or g.
fn parse_log_size(text: &str) -> Result<String, String> {
    let digits = text.trim_end_matches(['k', 'm', 'g']);
    let unit_len = text.len() - digits.len();
    let valid = unit_len <= 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a size such as 512k, 10m or 1g"))
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// Options of Kubernetes mode only.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Kubernetes mode")]
pub struct ClusterArgs {
    /// Watch only this namespace [default: all namespaces].
    #[arg(long, env = "INFRAPILOT_WATCH_NAMESPACE", value_name = "NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Elect a leader on a coordination.k8s.io Lease, so that several replicas are safe.
    #[arg(long, env = "INFRAPILOT_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub leader_election: bool,
    /// The leader election Lease's name.
    #[arg(long, env = "INFRAPILOT_LEASE_NAME", default_value = "infrapilot")]
    pub lease_name: String,
    /// The leader election Lease's namespace [default: the pod's namespace, else `default`].
    #[arg(long, env = "INFRAPILOT_LEASE_NAMESPACE", value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a leader's Lease lasts without renewal: how soon a standby takes over from a
    /// replica that died.
    #[arg(long, env = "INFRAPILOT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's name in the Lease and in Events [default: the pod name (POD_NAME), else
    /// the host name].
    #[arg(long, env = "INFRAPILOT_INSTANCE", value_name = "NAME")]
    pub instance: Option<String>,
    /// How long to wait at start for the CustomResourceDefinitions to be established.
    #[arg(long, env = "INFRAPILOT_CRD_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub crd_timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::api::common::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration such as 30s, 10m or 1h"))
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let audit_key = args
        .audit_key
        .clone()
        .unwrap_or_else(|| args.state.state_dir.join("audit.key"));
    // Absolute, since the paths in runs' status are read from wherever `get` is run.
    let reports = std::path::absolute(
        args.reports_dir
            .clone()
            .unwrap_or_else(|| args.state.state_dir.join("reports")),
    )
    .context("the reports directory")?;
    let services = ServiceOptions {
        delivery_timeout: args.delivery_timeout,
        edge: args.edge.options(),
        reports,
        max_restores: args.max_restores.into(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.manifests.is_empty() {
        let options = kubernetes::Options {
            namespace: args.cluster.watch_namespace.clone(),
            lease: args
                .cluster
                .leader_election
                .then(|| lease_options(&args.cluster)),
            state_url: args.state.url(),
            audit_key,
            resync: args.resync,
            probe_address: args
                .probe_address
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            crd_timeout: args.cluster.crd_timeout,
            instance: Some(instance(&args.cluster)),
            services,
        };
        runtime.block_on(kubernetes::run(options, shutdown_signal()))?;
    } else {
        let options = standalone::Options {
            manifests: args.manifests.clone(),
            state_url: args.state.url(),
            audit_key,
            resync: args.resync,
            probe_address: args.probe_address,
            services,
        };
        runtime.block_on(standalone::run(options, shutdown_signal()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The replica's name: given, the pod's, or the host's.
fn instance(args: &ClusterArgs) -> String {
    args.instance
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "infrapilot".to_owned())
}

/// The service account's namespace file, present in every pod.
const POD_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn lease_options(args: &ClusterArgs) -> LeaseOptions {
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::fs::read_to_string(POD_NAMESPACE_FILE).ok())
        .map(|namespace| namespace.trim().to_owned())
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or_else(|| "default".to_owned());
    // A replica restarted under the same pod name must not take its old Lease for its own
    // while another replica may have taken over: add a random suffix.
    let identity = format!(
        "{}-{}",
        instance(args),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    LeaseOptions {
        name: args.lease_name.clone(),
        namespace,
        identity,
        duration: args.lease_duration,
    }
}

/// SIGTERM (service managers, `docker stop`, Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
