//! Where the provisioned dependencies are, as `tests/env/services.sh` exports them.

use std::path::PathBuf;

const HOW: &str = "run the suite with `tests/run.sh`, which provisions and starts every test \
     dependency; to run tests by hand, start them with `tests/env/provision.sh` and \
     `tests/env/services.sh up VENV`, then source the env.sh file it writes (see README.md)";

/// The value of `var`, or a panic naming `what` is missing and how to get it.
pub fn required(var: &str, what: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!("{what} is not available: {var} is not set; {HOW}"),
    }
}

/// Like [`required`], for a path that must exist.
pub fn required_path(var: &str, what: &str) -> PathBuf {
    let path = PathBuf::from(required(var, what));
    assert!(
        path.exists(),
        "{what} is not available: {var} points at {} which does not exist; {HOW}",
        path.display()
    );
    path
}

/// The per-run state directory; tests keep their logs and scratch files below it so that a
/// failed test leaves something to read.
pub fn state_dir() -> PathBuf {
    required_path("INFRAPILOT_TEST_STATE", "the test state directory")
}

/// A fresh directory for one test's files, named after it, under the run's state directory.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = state_dir().join("tests").join(crate::names::unique(name));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}
