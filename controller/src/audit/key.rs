//! The secret that chains audit records together.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use hmac::{Hmac, KeyInit};
use sha2::Sha256;

/// The length of a generated key, in bytes.
const KEY_LEN: usize = 32;

/// Shorter keys make the HMAC guessable.
const MIN_KEY_LEN: usize = 16;

/// The HMAC-SHA256 key of an audit log. Whoever holds it can rewrite the log undetected, so it
/// lives apart from the database: in a file (standalone mode) or a Secret (Kubernetes mode).
///
/// Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct AuditKey(Vec<u8>);

impl AuditKey {
    /// Reads the key from `path`, which holds it as 64 hexadecimal characters. When the file
    /// does not exist, a random key is generated and written there (mode 0600, parent
    /// directories created as needed).
    pub fn load_or_create(path: &Path) -> anyhow::Result<AuditKey> {
        match std::fs::read(path) {
            Ok(content) => return parse_key_file(path, &content),
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot read the audit key {}", path.display()));
            }
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key).map_err(|e| anyhow!("cannot generate an audit key: {e}"))?;
        match write_new_key_file(path, &key) {
            Ok(()) => Ok(AuditKey(key.to_vec())),
            // Another process created it first: its key is the one the log will use.
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {
                let content = std::fs::read(path)
                    .with_context(|| format!("cannot read the audit key {}", path.display()))?;
                parse_key_file(path, &content)
            }
            Err(error) => {
                Err(error).with_context(|| format!("cannot write the audit key {}", path.display()))
            }
        }
    }

    /// A key from raw bytes, such as a Secret's data. At least 16 bytes are required.
    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<AuditKey> {
        if bytes.len() < MIN_KEY_LEN {
            bail!(
                "an audit key needs at least {MIN_KEY_LEN} bytes, this one has {}",
                bytes.len()
            );
        }
        Ok(AuditKey(bytes.to_vec()))
    }

    pub(super) fn mac(&self) -> Hmac<Sha256> {
        Hmac::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// Errors never quote the content: a nearly valid file is nearly the key.
fn parse_key_file(path: &Path, content: &[u8]) -> anyhow::Result<AuditKey> {
    let invalid = || {
        anyhow!(
            "{} is not an audit key: it must hold {} hexadecimal characters",
            path.display(),
            KEY_LEN * 2
        )
    };
    let text = std::str::from_utf8(content).map_err(|_| invalid())?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(text, &mut key).map_err(|_| invalid())?;
    Ok(AuditKey(key.to_vec()))
}

fn write_new_key_file(path: &Path, key: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    // `create_new` so that two processes starting together cannot overwrite each other's key.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_missing_key_file_is_created_private_and_read_back_the_same() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("state/audit.key");
        let created = AuditKey::load_or_create(&path).expect("created");
        let metadata = std::fs::metadata(&path).expect("key file");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("key file");
        let hex = text.strip_suffix('\n').expect("trailing newline");
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        let loaded = AuditKey::load_or_create(&path).expect("loaded");
        assert_eq!(created.0, loaded.0);
        assert_eq!(loaded.0, hex::decode(hex).expect("hex"));
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_that_names_the_file_but_not_its_content() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("audit.key");
        let content = "s3cr3t-but-not-hex-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
        std::fs::write(&path, content).expect("written");
        let error = format!(
            "{:#}",
            AuditKey::load_or_create(&path).expect_err("corrupt")
        );
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(!error.contains("s3cr3t"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).expect("kept"), content);
    }

    #[test]
    fn a_key_of_the_wrong_length_is_rejected() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("audit.key");
        std::fs::write(&path, "abcd\n").expect("written");
        assert!(AuditKey::load_or_create(&path).is_err());
    }

    #[test]
    fn short_raw_keys_are_rejected() {
        assert!(AuditKey::from_bytes(&[7; 15]).is_err());
        assert!(AuditKey::from_bytes(&[7; 16]).is_ok());
    }

    #[test]
    fn debug_output_does_not_show_the_key() {
        let key = AuditKey::from_bytes(&[0xab; 32]).expect("key");
        let debug = format!("{key:?}");
        assert!(!debug.contains("ab") && !debug.contains("171"), "{debug}");
    }
}
