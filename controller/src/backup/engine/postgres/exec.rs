//! Running a tool inside the server's container: its input streamed from the dump file
//! (decompressed here), its output collected as it comes, and directory dumps uploaded as a
//! streamed tar archive.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::SUPERUSER;
use super::commands::{Server, Uploaded};
use super::engine_error;
use super::output::{Tail, last_lines};
use crate::backup::engine::EngineError;
use crate::backup::{Compression, Dump};
use crate::docker::{ExecCommand, Output};

/// Where the official image's server puts its unix socket.
const SOCKET_DIR: &str = "/var/run/postgresql";
/// Runs its arguments as a command, then reads the rest of standard input, and exits with the
/// command's code (see [`Server::run`]). Fixed text; the command comes as separate arguments.
const DRAIN: &str = "\"$@\"; code=$?; cat >/dev/null; exit $code";
/// Directory dumps are uploaded below this directory of the container.
const UPLOAD_PARENT: &str = "/tmp";
/// The size of the pieces a dump is streamed in.
const CHUNK: usize = 256 * 1024;
/// How many pieces may wait between the file reader and the writer into Docker.
const CHUNKS_IN_FLIGHT: usize = 8;
/// The most a tool may print on standard output where it is kept (a listing, a result).
const MAX_STDOUT: usize = 64 << 20;

/// What a tool run with [`Server::run`] did.
#[derive(Debug)]
pub(super) struct Finished {
    pub exit_code: i64,
    /// Standard output, when kept.
    pub stdout: Vec<u8>,
    /// The end of standard error.
    pub tail: String,
    /// Bytes fed to the tool's standard input.
    pub fed: u64,
}

impl Finished {
    /// The tool's last lines, for an error message.
    pub(super) fn error_text(&self) -> String {
        last_lines(&self.tail)
    }
}

/// What a tool reads on its standard input.
#[derive(Clone, Copy, Debug)]
pub(super) struct Input<'a> {
    pub path: &'a Path,
    pub compression: Compression,
}

impl<'a> Input<'a> {
    pub(super) fn of(dump: &'a Dump) -> Self {
        Self {
            path: &dump.path,
            compression: dump.compression,
        }
    }
}

/// Reads `input` decompressed on a blocking thread and sends it in [`CHUNK`]s; stops when the
/// receiver is gone. A read error is sent as the last item.
fn spawn_reader(input: Input<'_>) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let path = input.path.to_owned();
    let compression = input.compression;
    tokio::task::spawn_blocking(move || {
        let mut reader = match crate::backup::open(&path, compression) {
            Ok(reader) => reader,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let mut filled = 0;
            let result = loop {
                match reader.read(&mut chunk[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == CHUNK {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            let end = filled < CHUNK;
            if filled > 0 {
                chunk.truncate(filled);
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            if end {
                return;
            }
        }
    });
    rx
}

impl Server {
    /// Runs `argv` in the container as the superuser's OS user, with `input` on its standard
    /// input. Returns when the tool has ended; a read error of `input` fails at once.
    pub(super) async fn run(
        &self,
        argv: &[&str],
        env: &[String],
        input: Option<Input<'_>>,
        keep_stdout: bool,
    ) -> Result<Finished, EngineError> {
        let tool = argv.first().copied().unwrap_or_default();
        let what = format!("running {tool} in {}", self.name);
        let mut full_env = vec![
            format!("PGHOST={SOCKET_DIR}"),
            format!("PGUSER={SUPERUSER}"),
            "PGAPPNAME=infrapilot".to_owned(),
        ];
        full_env.extend(env.iter().cloned());
        // A tool that stops reading its input early (`pg_restore --list` once it has the
        // table of contents, or a restore that failed) would end the exec while the dump is
        // still being written into it: Docker then resets the connection, and the tool's last
        // output may be lost with it. So the input is read to its end, after the tool.
        let mut cmd: Vec<String> = Vec::new();
        if input.is_some() {
            cmd.extend([
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                DRAIN.to_owned(),
                "infrapilot-drain".to_owned(),
            ]);
        }
        cmd.extend(argv.iter().map(|s| (*s).to_owned()));
        let command = ExecCommand {
            argv: cmd,
            env: full_env,
            user: Some(SUPERUSER.to_owned()),
            stdin: input.is_some(),
        };
        let attached = self
            .docker
            .attach(&self.name, &command)
            .await
            .map_err(|e| engine_error(&what, e))?;
        let (stdin, mut stream) = (attached.stdin, attached.output);

        let fed = AtomicU64::new(0);
        // Feeds the input; ends with Err only when the dump could not be read. A write error
        // means the tool stopped reading (it exited, e.g. `pg_restore --list` once it has the
        // table of contents): its exit code tells whether that was a failure.
        let feed = async {
            let (Some(input), Some(mut stdin)) = (input, stdin) else {
                return Ok(());
            };
            let mut chunks = spawn_reader(input);
            while let Some(chunk) = chunks.recv().await {
                let chunk = chunk.map_err(|e| {
                    EngineError::Failed(format!(
                        "reading the dump {} failed after {} bytes: {e}",
                        input.path.display(),
                        fed.load(Ordering::Relaxed)
                    ))
                })?;
                if stdin.write_all(&chunk).await.is_err() {
                    return Ok(());
                }
                fed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            // The end of the input: Docker closes the tool's standard input.
            let _ = stdin.shutdown().await;
            // Keep the connection's write half until the output is read.
            std::future::pending::<()>().await;
            Ok(())
        };
        let collect = async {
            let mut stdout = Vec::new();
            let mut tail = Tail::default();
            while let Some(chunk) = stream.next().await {
                match chunk.map_err(|e| engine_error(&what, e))? {
                    Output::Stdout(message) if keep_stdout => {
                        if stdout.len() + message.len() > MAX_STDOUT {
                            return Err(EngineError::Failed(format!(
                                "{tool} printed more than {} MiB",
                                MAX_STDOUT >> 20
                            )));
                        }
                        stdout.extend_from_slice(&message);
                    }
                    Output::Stderr(message) => tail.push(&message),
                    // Not kept: psql's result tables of a script's SELECTs, say.
                    Output::Stdout(_) => {}
                }
            }
            Ok::<_, EngineError>((stdout, tail))
        };
        tokio::pin!(feed);
        tokio::pin!(collect);
        let mut feeding = true;
        let (stdout, tail) = loop {
            tokio::select! {
                biased;
                fed = &mut feed, if feeding => {
                    fed?;
                    feeding = false;
                }
                output = &mut collect => break output?,
            }
        };
        let exit_code = attached
            .exit_code
            .await
            .map_err(|e| engine_error(&what, e))?;
        Ok(Finished {
            exit_code,
            stdout,
            tail: tail.text(),
            fed: fed.load(Ordering::Relaxed),
        })
    }

    /// Uploads a directory dump (once per source) and returns its path in the container.
    pub(super) async fn upload(&self, dump: &Dump) -> Result<(String, u64), EngineError> {
        let mut uploaded = self.uploaded.lock().await;
        if let Some(done) = uploaded.iter().find(|u| u.source == dump.path) {
            return Ok((done.target.clone(), done.bytes));
        }
        let dir_name = format!("infrapilot-dump-{}", uploaded.len());
        let target = format!("{UPLOAD_PARENT}/{dir_name}");
        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(CHUNKS_IN_FLIGHT);
        let source = dump.path.clone();
        let archiver = tokio::task::spawn_blocking(move || archive_dir(&source, &dir_name, tx));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        let sent = self.docker.upload(&self.name, UPLOAD_PARENT, body).await;
        // The dump's own error first: an upload cut short by it fails for that reason.
        let bytes = match archiver.await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                return Err(EngineError::Failed(format!(
                    "reading the directory dump {}: {e}",
                    dump.path.display()
                )));
            }
            Err(e) => {
                return Err(EngineError::Failed(format!(
                    "reading the directory dump {}: {e}",
                    dump.path.display()
                )));
            }
        };
        sent.map_err(|e| {
            engine_error(
                &format!("uploading the directory dump into {}", self.name),
                e,
            )
        })?;
        uploaded.push(Uploaded {
            source: dump.path.clone(),
            target: target.clone(),
            bytes,
        });
        Ok((target, bytes))
    }
}

/// Writes a tar of `source` (as `name/...`) into `tx` in [`CHUNK`]s; returns the size of the
/// files archived. Ownership and modes are normalised (root, 0644/0755) so that the server's
/// OS user can read them whatever they are on the operator's side.
fn archive_dir(
    source: &Path,
    name: &str,
    tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
) -> std::io::Result<u64> {
    struct Sink {
        tx: mpsc::Sender<std::io::Result<Vec<u8>>>,
        buffer: Vec<u8>,
    }
    impl Sink {
        fn send(&mut self) -> std::io::Result<()> {
            let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
            self.tx
                .blocking_send(Ok(data))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended"))
        }
    }
    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.buffer.extend_from_slice(data);
            if self.buffer.len() >= CHUNK {
                self.send()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            if !self.buffer.is_empty() {
                self.send()?;
            }
            Ok(())
        }
    }

    let error_tx = tx.clone();
    let result: std::io::Result<u64> = (|| {
        let mut bytes = 0;
        for entry in std::fs::read_dir(source)? {
            let metadata = entry?.metadata()?;
            if metadata.is_file() {
                bytes += metadata.len();
            }
        }
        let mut builder = tar::Builder::new(Sink {
            tx,
            buffer: Vec::with_capacity(CHUNK),
        });
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all(name, source)?;
        let mut sink = builder.into_inner()?;
        sink.flush()?;
        Ok(bytes)
    })();
    if let Err(e) = &result {
        // Cuts the upload short so that Docker does not take a partial directory for whole.
        let _ = error_tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
    }
    result
}
