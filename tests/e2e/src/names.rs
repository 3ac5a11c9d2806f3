//! Unique names, so that tests running side by side never share an object.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `prefix` followed by a suffix unique to this process and call, usable as a Docker name,
/// a PostgreSQL identifier (lower case, digits, `_`) and a file name. The prefix is folded to
/// that alphabet too.
pub fn unique(prefix: &str) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{count}_{:x}",
        std::process::id(),
        nanos % 0x10000
    )
}

#[cfg(test)]
mod tests {
    use super::unique;

    #[test]
    fn names_are_distinct_and_use_a_safe_alphabet() {
        let a = unique("My Test-1");
        let b = unique("My Test-1");
        assert_ne!(a, b);
        assert!(a.starts_with("my_test_1_"), "{a}");
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
    }
}
