//! The operator's edge in a test: published on free loopback ports and labelled with the
//! test's Docker scope, so that the scope's cleanup removes it.

use std::time::Duration;

use crate::docker::{SCOPE_LABEL, TEST_LABEL, TestDocker, images};

#[derive(Debug, Clone)]
pub struct TestEdge {
    pub name: String,
    pub http: u16,
    pub https: u16,
    labels: Vec<String>,
}

/// A port nothing listens on right now, for a server that binds it later (Docker publishing
/// the edge). Not one the kernel hands out for port 0: those come from the ephemeral range,
/// which every outgoing connection and every other test's `bind(0)` draws from too, so such a
/// port was sometimes taken again before Docker bound it ("address already in use"). Ports
/// below the ephemeral range are only ever taken on purpose; a random start keeps the tests
/// running at once (one process each) apart.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    // Below Linux's default ephemeral range (32768-60999), above the well-known services.
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let start = (hasher.finish() % u64::from(SPAN)) as u16;
    // Never the same port twice in one test process (an edge's two ports, say).
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let port = (0..SPAN)
        .map(|i| LOW + (start + i) % SPAN)
        .find(|port| {
            !given.contains(port) && std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok()
        })
        .expect("a free port below the ephemeral range");
    given.push(port);
    port
}

impl TestEdge {
    pub fn new(docker: &TestDocker) -> Self {
        let labels = docker.labels();
        Self {
            name: docker.unique_name("edge"),
            http: free_port(),
            https: free_port(),
            labels: vec![
                format!("{TEST_LABEL}={}", labels[TEST_LABEL]),
                format!("{SCOPE_LABEL}={}", labels[SCOPE_LABEL]),
            ],
        }
    }

    /// An edge whose plain HTTP is on `http` (pebble validates HTTP-01 on a fixed port).
    pub fn with_http_port(docker: &TestDocker, http: u16) -> Self {
        Self {
            http,
            ..Self::new(docker)
        }
    }

    /// The `infrapilot run` options for this edge, from the nginx test image.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--edge-name".to_owned(),
            self.name.clone(),
            "--edge-image".to_owned(),
            images::NGINX.to_owned(),
            "--edge-address".to_owned(),
            "127.0.0.1".to_owned(),
            "--edge-http-port".to_owned(),
            self.http.to_string(),
            "--edge-https-port".to_owned(),
            self.https.to_string(),
            "--edge-check-interval".to_owned(),
            "1s".to_owned(),
        ];
        for label in &self.labels {
            args.push("--edge-label".to_owned());
            args.push(label.clone());
        }
        args
    }

    /// How many times nginx in the edge reloaded its configuration, by nginx's own log (the
    /// official image logs to the container's stderr): every reload, whoever asked for it.
    pub async fn reloads(&self, docker: &TestDocker) -> Result<usize, String> {
        use futures::StreamExt;
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .build();
        let mut logs = docker.client().logs(&self.name, Some(options));
        let mut reloads = 0;
        while let Some(line) = logs.next().await {
            let line = line.map_err(|e| format!("the edge's log: {e}"))?;
            // nginx: "signal 1 (SIGHUP) received from 123, reconfiguring".
            reloads += line.to_string().matches("(SIGHUP) received").count();
        }
        Ok(reloads)
    }

    /// The `notAfter` of the certificate the edge serves for `host`, read from a TLS handshake
    /// with that SNI (openssl), so that what nginx serves can be compared with what a status
    /// says.
    pub async fn served_not_after(&self, host: &str) -> Result<jiff::Timestamp, String> {
        let handshake = tokio::process::Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.https)])
            .args(["-servername", host])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("openssl s_client: {e}"))?;
        let mut x509 = tokio::process::Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("openssl x509: {e}"))?;
        if let Some(mut stdin) = x509.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(&handshake.stdout)
                .await
                .map_err(|e| format!("openssl x509: {e}"))?;
        }
        let output = x509
            .wait_with_output()
            .await
            .map_err(|e| format!("openssl x509: {e}"))?;
        // "notAfter=2026-12-04 06:43:00Z"
        let text = String::from_utf8_lossy(&output.stdout);
        let date = text.trim().strip_prefix("notAfter=").ok_or_else(|| {
            format!(
                "no certificate served for {host}: {}",
                String::from_utf8_lossy(&handshake.stderr).trim()
            )
        })?;
        date.replacen(' ', "T", 1)
            .parse()
            .map_err(|e| format!("{date}: {e}"))
    }

    /// A GET through the edge for `host`: status and body. Redirects are answers, not
    /// followed.
    pub async fn get(&self, host: &str) -> Result<(u16, String), String> {
        self.get_path(host, "/").await
    }

    /// [`TestEdge::get`] of `path` (`/status/500` on the test app answers 500).
    pub async fn get_path(&self, host: &str, path: &str) -> Result<(u16, String), String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .get(format!("http://127.0.0.1:{}{path}", self.http))
            .header("Host", host)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|e| e.to_string())?))
    }

    /// Waits until `host` answers `status` with a body containing `body`; `log` tells why not.
    pub async fn wait_for(&self, host: &str, status: u16, body: &str, log: impl Fn() -> String) {
        crate::wait::eventually(
            &format!("{host} to answer {status} with {body:?}"),
            Duration::from_secs(30),
            || async {
                match self.get(host).await {
                    Ok((s, b)) if s == status && b.contains(body) => Ok(()),
                    other => Err(format!("{other:?}; log:\n{}", log())),
                }
            },
        )
        .await;
    }
}
