//! Cron schedules (croner: standard five fields, or six with leading seconds; UTC).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use jiff::Timestamp;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule(croner::Cron);

impl Schedule {
    /// Parses `expression`; the error says what is wrong with it.
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        croner::Cron::from_str(expression)
            .map(Schedule)
            .map_err(|e| format!("not a cron expression ({e})"))
    }

    /// The first scheduled time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        // Schedules name whole seconds, but croner carries the fraction of `after` into what it
        // finds (03:30:00.467): a status would then change from one reconcile to the next.
        // The whole second before `after` has the same next time, since none falls between.
        let after = to_chrono(Timestamp::from_second(after.as_second()).ok()?)?;
        let next = self.0.find_next_occurrence(&after, false).ok()?;
        Timestamp::new(next.timestamp(), next.timestamp_subsec_nanos() as i32).ok()
    }
}

fn to_chrono(time: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(time.as_second(), time.subsec_nanosecond().try_into().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn next_times_follow_the_expression_in_utc() {
        let nightly = Schedule::parse("30 3 * * *").unwrap();
        assert_eq!(
            nightly.next_after(at("2026-11-22T10:00:00Z")),
            Some(at("2026-11-23T03:30:00Z"))
        );
        // Strictly after: a run due now is not due again at the same instant.
        assert_eq!(
            nightly.next_after(at("2026-11-23T03:30:00Z")),
            Some(at("2026-11-24T03:30:00Z"))
        );
        let seconds = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            seconds.next_after(at("2026-11-22T10:00:01Z")),
            Some(at("2026-11-22T10:00:10Z"))
        );
    }

    #[test]
    fn next_times_are_whole_seconds_whatever_the_fraction_of_now() {
        let nightly = Schedule::parse("30 3 * * *").unwrap();
        assert_eq!(
            nightly.next_after(at("2026-11-22T10:00:00.467036Z")),
            Some(at("2026-11-23T03:30:00Z"))
        );
        let seconds = Schedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            seconds.next_after(at("2026-11-22T10:00:09.5Z")),
            Some(at("2026-11-22T10:00:10Z"))
        );
        assert_eq!(
            seconds.next_after(at("2026-11-22T10:00:10.5Z")),
            Some(at("2026-11-22T10:00:20Z"))
        );
    }

    #[test]
    fn bad_expressions_are_refused_with_a_reason() {
        for bad in ["30 3 * *", "61 * * * *", "every day", "* * * * * * * *"] {
            let error = Schedule::parse(bad).unwrap_err();
            assert!(error.starts_with("not a cron expression"), "{bad}: {error}");
        }
    }
}
