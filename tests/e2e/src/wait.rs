//! Waiting with a deadline: poll until something holds, never a bare sleep.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Polls `probe` until it returns `Ok`, and returns that value. Fails the test when `timeout`
/// passes, with `what` and the last error. Polls often at first and then every 250 ms.
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(20);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(error) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last error: {error}")
            }
            Err(_) => {
                tokio::time::sleep(
                    interval.min(deadline.saturating_duration_since(Instant::now())),
                )
                .await;
                interval = (interval * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// The condition of type `kind` in an object's `status.conditions`, if it has one.
pub fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

/// Whether the object's condition `kind` has `status` and describes the object's current
/// generation (a condition left over from an older spec does not count).
pub fn has_condition(object: &Value, kind: &str, status: &str) -> bool {
    let Some(condition) = condition(object, kind) else {
        return false;
    };
    let generation = object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let observed = condition.get("observedGeneration").and_then(Value::as_i64);
    condition.get("status").and_then(Value::as_str) == Some(status)
        && (generation.is_none() || observed >= generation)
}

/// Polls `fetch` (which reads an object: from `infrapilot get -o json`, the Kubernetes API, …)
/// until the object's condition `kind` has `status` for its current generation, and returns
/// the object.
pub async fn wait_for_condition<F, Fut>(
    what: &str,
    kind: &str,
    status: &str,
    timeout: Duration,
    mut fetch: F,
) -> Value
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Value>>,
{
    eventually(&format!("{what} to have {kind}={status}"), timeout, || {
        let object = fetch();
        async move {
            let object = object.await?;
            if has_condition(&object, kind, status) {
                Ok(object)
            } else {
                let seen = condition(&object, kind).map_or("none".to_owned(), Value::to_string);
                Err(anyhow::anyhow!("condition {kind} is {seen}"))
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn object(status: &str, observed: i64, generation: i64) -> Value {
        json!({
            "metadata": {"name": "a", "generation": generation},
            "status": {"conditions": [
                {"type": "Other", "status": "False"},
                {"type": "Ready", "status": status, "observedGeneration": observed},
            ]}
        })
    }

    #[test]
    fn a_condition_counts_only_for_the_current_generation() {
        assert!(has_condition(&object("True", 2, 2), "Ready", "True"));
        assert!(!has_condition(&object("True", 1, 2), "Ready", "True"));
        assert!(!has_condition(&object("False", 2, 2), "Ready", "True"));
        assert!(!has_condition(&json!({"status": {}}), "Ready", "True"));
        assert_eq!(
            condition(&object("True", 1, 1), "Other").unwrap()["status"],
            "False"
        );
    }

    #[tokio::test]
    async fn eventually_returns_once_the_probe_succeeds() {
        let calls = AtomicU32::new(0);
        let value = eventually("the third call", Duration::from_secs(5), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("not yet"),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(value, 2);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 100ms waiting for nothing; last error: never")]
    async fn eventually_fails_the_test_at_the_deadline_with_the_last_error() {
        eventually::<(), _, _, _>("nothing", Duration::from_millis(100), || async {
            Err("never")
        })
        .await;
    }

    #[tokio::test]
    async fn wait_for_condition_returns_the_object_once_ready() {
        let calls = AtomicU32::new(0);
        let ready = wait_for_condition("a", "Ready", "True", Duration::from_secs(5), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(if n < 2 {
                    object("False", 1, 1)
                } else {
                    object("True", 1, 1)
                })
            }
        })
        .await;
        assert_eq!(ready["metadata"]["name"], "a");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
