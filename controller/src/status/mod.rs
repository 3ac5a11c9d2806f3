//! Status conditions, written the way Kubernetes tools expect them.
//!
//! `lastTransitionTime` moves only when a condition's status flips, every condition carries the
//! generation it describes, and reasons follow the API's grammar. Reconcilers compute a new
//! status with these helpers; the runtimes write it only when it differs from the stored one.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::common::Conditions;

/// The condition every kind carries: whether the object is in the state its spec asks for.
pub const READY: &str = "Ready";

/// The longest message the API server accepts on a condition.
const MAX_MESSAGE: usize = 32 * 1024;

/// A condition to set: its type, whether it holds, a CamelCase reason and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Observation {
    pub fn ready(status: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: READY.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Sets `observation` in `conditions` for `generation`. The transition time is `now` when the
/// condition is new or its status flipped, and kept otherwise.
pub fn set(
    conditions: &mut Conditions,
    observation: Observation,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if observation.status { "True" } else { "False" }.to_owned();
    let reason = sanitize_reason(&observation.reason);
    let message = truncate(&observation.message, MAX_MESSAGE);
    match conditions
        .0
        .iter_mut()
        .find(|c| c.type_ == observation.type_)
    {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status;
            existing.reason = reason;
            existing.message = message;
            existing.observed_generation = generation;
        }
        None => conditions.0.push(Condition {
            type_: observation.type_,
            status,
            reason,
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Whether `conditions` says `type_` holds for `generation`.
pub fn is_true(conditions: &Conditions, type_: &str, generation: Option<i64>) -> bool {
    conditions.get(type_).is_some_and(|c| {
        c.status == "True" && (generation.is_none() || c.observed_generation >= generation)
    })
}

/// Reasons must match `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`: anything else is dropped.
fn sanitize_reason(reason: &str) -> String {
    let kept: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | ':'))
        .collect();
    let kept = kept
        .trim_start_matches(|c: char| !c.is_ascii_alphabetic())
        .trim_end_matches([',', ':']);
    if kept.is_empty() {
        "Unknown".to_owned()
    } else {
        kept.chars().take(1024).collect()
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_flips() {
        let mut conditions = Conditions::default();
        set(
            &mut conditions,
            Observation::ready(false, "Verifying", "sending"),
            Some(1),
            at(0),
        );
        set(
            &mut conditions,
            Observation::ready(false, "DeliveryFailed", "refused"),
            Some(1),
            at(10),
        );
        let ready = conditions.get(READY).unwrap();
        assert_eq!(ready.last_transition_time.0, at(0));
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("DeliveryFailed", "refused")
        );

        set(
            &mut conditions,
            Observation::ready(true, "Verified", "delivered"),
            Some(2),
            at(20),
        );
        let ready = conditions.get(READY).unwrap();
        assert_eq!(ready.last_transition_time.0, at(20));
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(conditions.0.len(), 1);
    }

    #[test]
    fn readiness_counts_only_for_the_observed_generation() {
        let mut conditions = Conditions::default();
        set(
            &mut conditions,
            Observation::ready(true, "Verified", ""),
            Some(1),
            at(0),
        );
        assert!(is_true(&conditions, READY, Some(1)));
        assert!(!is_true(&conditions, READY, Some(2)));
        assert!(!is_true(&conditions, "Other", None));
    }

    #[test]
    fn reasons_and_messages_are_kept_within_the_api_grammar() {
        assert_eq!(sanitize_reason("Delivery failed!"), "Deliveryfailed");
        assert_eq!(sanitize_reason("9lives:"), "lives");
        assert_eq!(sanitize_reason("!!"), "Unknown");
        let long = "é".repeat(MAX_MESSAGE);
        let cut = truncate(&long, MAX_MESSAGE);
        assert!(cut.len() <= MAX_MESSAGE && cut.ends_with("..."));
    }
}
