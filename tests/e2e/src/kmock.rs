//! kmock's Kubernetes emulator (`tests/e2e/support/kmock_emulator.py`) as a process owned by a
//! test: a real HTTP API with list, watch, create, patch and delete, served from memory.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::process::Command;

use crate::Result;
use crate::process::Process;

#[derive(Debug)]
pub struct KubeEmulator {
    process: Process,
    url: String,
}

impl KubeEmulator {
    /// Starts an emulator that knows `resources` (`group/version/plural`, or `v1/plural` for
    /// the core group) before any object of theirs exists.
    pub async fn start(resources: &[&str]) -> Result<Self> {
        let python =
            crate::env::required_path("INFRAPILOT_TEST_PYTHON", "the Python test tools (kmock)");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("support/kmock_emulator.py");
        let log = crate::env::test_dir("kmock").join("kmock.log");
        let mut command = Command::new(python);
        command.arg(&script);
        for resource in resources {
            command.args(["--resource", resource]);
        }
        let process = Process::spawn("kmock", command, &log)?;
        let url = crate::wait::eventually("kmock to listen", Duration::from_secs(20), || async {
            let log = process.log();
            log.lines()
                .find_map(|line| line.strip_prefix("listening on "))
                .map(str::to_owned)
                .ok_or_else(|| format!("log so far: {log}"))
        })
        .await;
        Ok(Self { process, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client talking to the emulator, with the `default` namespace.
    pub fn client(&self) -> Result<kube::Client> {
        let config = kube::Config::new(self.url.parse().context("the emulator's URL")?);
        Ok(kube::Client::try_from(config)?)
    }

    /// Writes a kubeconfig for the emulator (namespace `default`) to `path`, for processes
    /// started with `KUBECONFIG`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> Result<()> {
        self.write_kubeconfig_as(path, None)
    }

    /// [`KubeEmulator::write_kubeconfig`] for a user with the bearer token `client`, which the
    /// emulator records with each write and which [`Fault::client`] selects.
    pub fn write_kubeconfig_as(&self, path: &std::path::Path, client: Option<&str>) -> Result<()> {
        let user = client.map_or_else(|| "{}".to_owned(), |token| format!("{{token: {token}}}"));
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n\
             clusters:\n- name: kmock\n  cluster:\n    server: {}\n\
             users:\n- name: kmock\n  user: {user}\n\
             contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: kmock\n    namespace: default\n",
            self.url
        );
        std::fs::write(path, config)?;
        Ok(())
    }

    /// Makes the emulator answer the requests `fault` matches with its status instead of
    /// serving them.
    pub async fn inject(&self, fault: &Fault) -> Result<()> {
        reqwest::Client::new()
            .post(format!("{}/_emulator/faults", self.url))
            .json(fault)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Removes every injected fault.
    pub async fn heal(&self) -> Result<()> {
        reqwest::Client::new()
            .delete(format!("{}/_emulator/faults", self.url))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Every write the emulator has answered so far, in order.
    pub async fn writes(&self) -> Result<Vec<Write>> {
        #[derive(serde::Deserialize)]
        struct Writes {
            writes: Vec<Write>,
        }
        let writes: Writes = reqwest::get(format!("{}/_emulator/writes", self.url))
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(writes.writes)
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Requests the emulator answers with an error instead of serving them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fault {
    /// A regular expression the request path must match.
    pub path: String,
    /// The HTTP methods it applies to.
    pub methods: Vec<String>,
    /// The client (bearer token) it applies to; `None`: every client.
    pub client: Option<String>,
    /// The status to answer (500, 409, ...).
    pub status: u16,
    /// How many requests it answers; `None`: every one until [`KubeEmulator::heal`].
    pub count: Option<u32>,
}

impl Fault {
    /// Every write (POST, PUT, PATCH, DELETE) to a path matching `path`, answered `status`.
    pub fn writes(path: &str, status: u16) -> Self {
        Self {
            path: path.to_owned(),
            methods: ["POST", "PUT", "PATCH", "DELETE"]
                .map(str::to_owned)
                .to_vec(),
            client: None,
            status,
            count: None,
        }
    }

    /// Only the requests of `client`.
    #[must_use]
    pub fn from_client(mut self, client: &str) -> Self {
        self.client = Some(client.to_owned());
        self
    }

    /// Only the next `count` requests.
    #[must_use]
    pub fn times(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }
}

/// One write the emulator answered.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Write {
    /// When it was answered, in Unix seconds.
    pub time: f64,
    pub client: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl Write {
    pub fn at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(self.time)
    }
}
