//! A scripted API server for unit tests (kube-rs controller-rs's `ApiServerVerifier` pattern):
//! each expected request is checked exactly, in order, and answered.

use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub struct ApiServer(Handle);

/// One expected request and its answer.
pub struct Reply {
    method: &'static str,
    path_and_query: String,
    status: u16,
    response: Value,
    content_type: Option<&'static str>,
    body: Option<Value>,
    body_fields: Vec<(&'static str, Value)>,
}

impl Reply {
    pub fn new(method: &'static str, path_and_query: &str, status: u16, response: Value) -> Self {
        Self {
            method,
            path_and_query: path_and_query.to_owned(),
            status,
            response,
            content_type: None,
            body: None,
            body_fields: Vec::new(),
        }
    }

    pub fn with_content_type(mut self, content_type: &'static str) -> Self {
        self.content_type = Some(content_type);
        self
    }

    /// The request body's value at JSON pointer `pointer` must equal `value`.
    pub fn with_body_field(mut self, pointer: &'static str, value: Value) -> Self {
        self.body_fields.push((pointer, value));
        self
    }

    /// The request body must equal `body` (as JSON).
    pub fn with_body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

impl ApiServer {
    pub fn new() -> (kube::Client, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (kube::Client::new(service, "default"), ApiServer(handle))
    }

    /// Serves `replies` in order, failing the test on any difference.
    pub async fn run(mut self, replies: Vec<Reply>) {
        for reply in replies {
            let (request, send) = self
                .0
                .next_request()
                .await
                .expect("the client made the expected request");
            assert_eq!(request.method().as_str(), reply.method);
            assert_eq!(
                request
                    .uri()
                    .path_and_query()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                reply.path_and_query
            );
            if let Some(content_type) = reply.content_type {
                assert_eq!(
                    request
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok()),
                    Some(content_type)
                );
            }
            if reply.body.is_some() || !reply.body_fields.is_empty() {
                let bytes = request
                    .into_body()
                    .collect_bytes()
                    .await
                    .expect("a request body");
                let body: Value = serde_json::from_slice(&bytes).expect("a JSON request body");
                if let Some(expected) = &reply.body {
                    assert_eq!(&body, expected);
                }
                for (pointer, expected) in &reply.body_fields {
                    assert_eq!(
                        body.pointer(pointer),
                        Some(expected),
                        "{pointer} of the request body {body}"
                    );
                }
            }
            let response = Response::builder()
                .status(reply.status)
                .body(Body::from(
                    serde_json::to_vec(&reply.response).expect("JSON"),
                ))
                .expect("a response");
            send.send_response(response);
        }
    }
}
