//! A child process owned by a test: output captured to a log file, stopped politely with
//! SIGTERM and a deadline, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::Result;

#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Waits for the process to end by itself, up to `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("{} still running after {timeout:?}", self.name))?
            .map_err(Into::into)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} has already exited", self.name))?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("{} ignored SIGTERM for {grace:?} and was killed", self.name)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn output_is_captured_and_sigterm_stops_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sh.log");
        let mut command = Command::new("sh");
        command.args(["-c", "echo started; echo oops >&2; exec sleep 30"]);
        let mut process = Process::spawn("sh", command, &log).unwrap();
        crate::wait::eventually("the output", Duration::from_secs(5), || async {
            let log = process.log();
            if log.contains("started") && log.contains("oops") {
                Ok(())
            } else {
                Err(log)
            }
        })
        .await;
        let status = process.stop(Duration::from_secs(5)).await.unwrap();
        assert!(
            !status.success(),
            "sleep ended by a signal, not by itself: {status:?}"
        );
        assert!(process.try_status().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ]);
        let mut process = Process::spawn("stubborn", command, &dir.path().join("log")).unwrap();
        crate::wait::eventually("the trap", Duration::from_secs(5), || async {
            if process.log().contains("ready") {
                Ok(())
            } else {
                Err("not ready")
            }
        })
        .await;
        let error = process.stop(Duration::from_millis(300)).await.unwrap_err();
        assert!(error.to_string().contains("ignored SIGTERM"), "{error}");
        assert!(process.try_status().unwrap().is_some());
    }
}
