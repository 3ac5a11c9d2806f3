//! Running the `infrapilot` binary in standalone mode, each test with its own state directory.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

use crate::Result;
use crate::process::Process;

/// The `infrapilot` binary under test: `INFRAPILOT_BIN`, or the one Cargo built next to this
/// test binary (`target/<profile>/infrapilot`).
pub fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("INFRAPILOT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/infrapilot
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let binary = profile_dir.join("infrapilot");
    assert!(
        binary.exists(),
        "the infrapilot binary is not built at {}: run `cargo build -p infrapilot` \
         (tests/run.sh does) or set INFRAPILOT_BIN",
        binary.display()
    );
    binary
}

/// An `infrapilot` process with its own working and state directory and a captured log.
#[derive(Debug)]
pub struct Operator {
    dir: PathBuf,
    process: Process,
}

impl Operator {
    /// Starts `infrapilot ARGS` in `dir` (created if needed), logging to `dir/infrapilot.log`.
    /// The process is killed if the `Operator` is dropped without [`Operator::stop`].
    pub fn start(dir: &Path, args: &[&str]) -> Result<Self> {
        Self::start_with_env(dir, args, &[])
    }

    /// [`Operator::start`] with extra environment variables (such as `KUBECONFIG`).
    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_binary(&binary(), dir, args, env)
    }

    /// [`Operator::start_with_env`] with another build of the binary (a benchmark's baseline).
    pub fn start_binary(
        binary: &Path,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .current_dir(dir)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        let process = Process::spawn("infrapilot", command, &dir.join("infrapilot.log"))?;
        Ok(Self {
            dir: dir.to_owned(),
            process,
        })
    }

    /// Starts `infrapilot run --manifests manifests` in `dir`; the manifests directory is
    /// created and its path returned by [`Operator::manifests`].
    pub fn standalone(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("manifests"))?;
        Self::start(dir, &["run", "--manifests", "manifests"])
    }

    /// The manifests directory of a standalone operator.
    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// An object as `infrapilot get KIND NAME -o json` prints it.
    pub async fn get(&self, kind: &str, name: &str) -> Result<serde_json::Value> {
        let output = cli(&self.dir, &["get", kind, name, "-o", "json"]).await?;
        anyhow::ensure!(
            output.status.success(),
            "infrapilot get {kind} {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Waits until the object's condition `type_` has `status` for its current generation.
    pub async fn wait_for_condition(
        &self,
        kind: &str,
        name: &str,
        type_: &str,
        status: &str,
    ) -> serde_json::Value {
        crate::wait::wait_for_condition(
            &format!("{kind} {name}"),
            type_,
            status,
            Duration::from_secs(30),
            || self.get(kind, name),
        )
        .await
    }

    /// The address of `/livez`, `/readyz` and `/metrics`, as the operator logs it once it
    /// listens (start it with `--probe-address 127.0.0.1:0`): the latest logged, so for an
    /// operator started again in the same directory the earlier one's until the new one
    /// logged its own (a caller asks again until the address answers).
    pub async fn probe_address(&self) -> String {
        crate::wait::eventually(
            "the probe address in the log",
            Duration::from_secs(30),
            || async {
                let log = self.log();
                // The latest: an operator started again in the same directory logs to the
                // same file.
                log.lines()
                    .rev()
                    .find_map(|line| line.split("/metrics on http://").nth(1))
                    .map(|address| address.trim().to_owned())
                    .ok_or_else(|| format!("log so far: {log}"))
            },
        )
        .await
    }

    /// Reconciles this process finished for `controller` (`proxy`, `alertchannel`, ...), by
    /// its `/metrics` (start it with `--probe-address 127.0.0.1:0`).
    pub async fn reconciles(&self, controller: &str) -> Result<u64, String> {
        let series = format!("infrapilot_reconciles_total{{controller=\"{controller}\"}}");
        Ok(self.metric(&series).await?.unwrap_or(0))
    }

    /// The value of one series (name and labels, as `/metrics` writes them), if it is there.
    pub async fn metric(&self, series: &str) -> Result<Option<u64>, String> {
        let url = format!("http://{}/metrics", self.probe_address().await);
        let text = reqwest::get(&url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("{url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let prefix = format!("{series} ");
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Stops the operator the way a service manager does (SIGTERM) and fails when it does not
    /// exit cleanly within ten seconds, with the end of its log.
    pub async fn stop(self) -> Result<()> {
        self.stop_within(Duration::from_secs(10)).await
    }

    /// [`Operator::stop`], failing when it takes longer than `limit`.
    pub async fn stop_within(mut self, limit: Duration) -> Result<()> {
        let status = self.process.stop(limit).await;
        match status {
            Ok(status) if status.success() => Ok(()),
            other => anyhow::bail!(
                "infrapilot did not stop cleanly ({other:?}); last log lines:\n{}",
                self.process.log_tail(30)
            ),
        }
    }
}

/// Runs a one-shot `infrapilot ARGS` (such as `get`, `audit verify`) in `dir` and returns its
/// output, whatever its exit status.
pub async fn cli(dir: &Path, args: &[&str]) -> Result<Output> {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .await
        .with_context(|| format!("running infrapilot {}", args.join(" ")))
}
