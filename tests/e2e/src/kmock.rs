//! kmock's Kubernetes emulator (`tests/e2e/support/kmock_emulator.py`) as a process owned by a
//! test: a real HTTP API with list, watch, create, patch and delete, served from memory.

use std::path::PathBuf;
use std::time::Duration;

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
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n\
             clusters:\n- name: kmock\n  cluster:\n    server: {}\n\
             users:\n- name: kmock\n  user: {{}}\n\
             contexts:\n- name: kmock\n  context:\n    cluster: kmock\n    user: kmock\n    namespace: default\n",
            self.url
        );
        std::fs::write(path, config)?;
        Ok(())
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}
