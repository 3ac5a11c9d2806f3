//! A loopback HTTP server that records every request: the receiving end of webhook and Slack
//! channels in tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::sync::oneshot;

use crate::Result;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.body)?)
    }
}

#[derive(Debug)]
struct Recorded {
    requests: Vec<Request>,
    status: StatusCode,
}

/// The server; it stops when dropped.
#[derive(Debug)]
pub struct WebhookServer {
    addr: SocketAddr,
    state: Arc<Mutex<Recorded>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl WebhookServer {
    /// Starts on a free port of 127.0.0.1, answering 200 until told otherwise.
    pub async fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(Recorded {
            requests: Vec::new(),
            status: StatusCode::OK,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(record).with_state(state.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            state,
            shutdown: Some(shutdown),
        })
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers every later request with `status` (to test failed deliveries).
    pub fn respond_with(&self, status: u16) {
        self.lock().status = StatusCode::from_u16(status).expect("a valid HTTP status");
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Waits until at least `count` requests arrived, and returns them all.
    pub async fn wait_for_requests(&self, count: usize, timeout: Duration) -> Vec<Request> {
        crate::wait::eventually(&format!("{count} webhook request(s)"), timeout, || async {
            let requests = self.requests();
            if requests.len() >= count {
                Ok(requests)
            } else {
                Err(format!("{} so far", requests.len()))
            }
        })
        .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn record(
    State(state): State<Arc<Mutex<Recorded>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let request = Request {
        method: method.to_string(),
        path: uri.to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    state.requests.push(request);
    state.status
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::WebhookServer;

    #[tokio::test]
    async fn requests_are_recorded_and_answered_with_the_chosen_status() {
        let server = WebhookServer::start().await.unwrap();
        let client = reqwest::Client::new();
        let response = client
            .post(server.url("/hooks/a?x=1"))
            .header("X-Token", "t1")
            .body(r#"{"text":"hi"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);

        server.respond_with(503);
        let response = client.put(server.url("/other")).send().await.unwrap();
        assert_eq!(response.status(), 503);

        let requests = server.wait_for_requests(2, Duration::from_secs(5)).await;
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path, "/hooks/a?x=1");
        assert_eq!(requests[0].header("x-token"), Some("t1"));
        assert_eq!(requests[0].json().unwrap()["text"], "hi");
        assert_eq!(requests[1].method, "PUT");
    }

    #[tokio::test]
    async fn the_server_stops_when_dropped() {
        let server = WebhookServer::start().await.unwrap();
        let addr = server.addr();
        drop(server);
        crate::wait::eventually("the listener to close", Duration::from_secs(5), || async {
            match tokio::net::TcpStream::connect(addr).await {
                Err(_) => Ok(()),
                Ok(_) => Err("still accepting"),
            }
        })
        .await;
    }
}
