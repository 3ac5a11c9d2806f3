//! The backup's checksum, always computed for the audit record, and compared with a
//! `sha256sum` / `md5sum` sidecar file when the backup job wrote one.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::source::BackupFile;

/// Hashing reads in 1 MiB blocks: large enough that the syscalls vanish next to the hashing.
const BLOCK: usize = 1 << 20;

/// The lowercase hex SHA-256 of a backup.
///
/// For a directory dump (`pg_dump -Fd`) it is the SHA-256 of a `sha256sum` listing of its
/// regular files, sorted bytewise by relative path, one `<hex>  <relative path>\n` line each.
/// This is what
/// `cd dump.dir && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum | sha256sum`
/// prints, so a backup job can write a matching `dump.dir.sha256` sidecar.
pub fn sha256(file: &BackupFile) -> io::Result<String> {
    digest::<sha2::Sha256>(file)
}

fn digest<D: Digest>(file: &BackupFile) -> io::Result<String> {
    if !file.directory {
        return hash_file::<D>(&file.path);
    }
    let mut listing = String::new();
    for relative in files_under(&file.path)? {
        let hex = hash_file::<D>(&file.path.join(&relative))?;
        listing.push_str(&format!("{hex}  {relative}\n"));
    }
    Ok(hex::encode(D::digest(listing.as_bytes())))
}

fn hash_file<D: Digest>(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = D::new();
    let mut buffer = vec![0; BLOCK];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The regular files under a directory, as `/`-separated relative paths in bytewise order.
fn files_under(root: &Path) -> io::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(root.join(&relative))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = relative.join(entry.file_name());
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let text = path.to_str().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{} has a file name that is not UTF-8",
                            root.join(&path).display()
                        ),
                    )
                })?;
                files.push(text.to_string());
            }
        }
    }
    files.sort_unstable();
    Ok(files)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Md5 => "md5",
        }
    }

    fn hex_length(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Md5 => 32,
        }
    }
}

/// A checksum file next to the backup, and the checksum it holds (lowercase hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sidecar {
    pub path: PathBuf,
    pub algorithm: Algorithm,
    pub expected: String,
}

/// The backup's sidecar: `<path>.sha256`, else `<path>.md5`, else none.
///
/// Accepted forms: a bare hex digest; `sha256sum` / `md5sum` output (`hex  name`,
/// `hex *name`, several lines of which one names the backup); and BSD / `--tag` output
/// (`SHA256 (name) = hex`).
pub fn sidecar(file: &BackupFile) -> Result<Option<Sidecar>, String> {
    for algorithm in [Algorithm::Sha256, Algorithm::Md5] {
        let mut path = file.path.clone().into_os_string();
        path.push(".");
        path.push(algorithm.name());
        let path = PathBuf::from(path);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(format!(
                    "cannot read the checksum file {}: {e}",
                    path.display()
                ));
            }
        };
        let name = file
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = parse_sidecar(&String::from_utf8_lossy(&text), algorithm, &name)
            .map_err(|problem| format!("the checksum file {} {problem}", path.display()))?;
        return Ok(Some(Sidecar {
            path,
            algorithm,
            expected,
        }));
    }
    Ok(None)
}

/// The digest a sidecar holds for the file `name`, or what is wrong with it (a phrase that
/// follows the sidecar's path).
fn parse_sidecar(text: &str, algorithm: Algorithm, name: &str) -> Result<String, String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut entries = Vec::new();
    for line in &lines {
        entries.push(parse_line(line, algorithm)?);
    }
    let hex = match entries.as_slice() {
        [] => return Err("is empty".to_string()),
        // One entry is this backup's, whatever name it was written with (often a path on the
        // machine that made it).
        [(hex, _)] => hex.clone(),
        many => {
            let matching: Vec<&String> = many
                .iter()
                .filter(|(_, listed)| {
                    listed
                        .as_deref()
                        .is_some_and(|listed| listed.rsplit('/').next() == Some(name))
                })
                .map(|(hex, _)| hex)
                .collect();
            match matching.as_slice() {
                [hex] => (*hex).clone(),
                [] => return Err(format!("has {} entries and none is for {name}", many.len())),
                _ => return Err(format!("has more than one entry for {name}")),
            }
        }
    };
    if hex.len() != algorithm.hex_length() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "does not hold a {} checksum: {hex:?} is not {} hex digits",
            algorithm.name(),
            algorithm.hex_length()
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// One line: `hex`, `hex  name`, `hex *name`, or `ALGO (name) = hex`.
fn parse_line(line: &str, algorithm: Algorithm) -> Result<(String, Option<String>), String> {
    let tag = match algorithm {
        Algorithm::Sha256 => "SHA256 (",
        Algorithm::Md5 => "MD5 (",
    };
    if let Some(rest) = line.strip_prefix(tag) {
        let (name, hex) = rest
            .rsplit_once(") = ")
            .ok_or_else(|| format!("has a malformed line {line:?}"))?;
        return Ok((hex.trim().to_string(), Some(name.to_string())));
    }
    if line.contains(" (") && line.contains(") = ") {
        return Err(format!(
            "has a line {line:?} that is not a {} checksum",
            algorithm.name()
        ));
    }
    // sha256sum starts a line with a backslash when it escaped the name.
    let line = line.strip_prefix('\\').unwrap_or(line);
    let (hex, name) = match line.split_once(char::is_whitespace) {
        Some((hex, rest)) => {
            let rest = rest.trim_start();
            let name = rest.strip_prefix('*').unwrap_or(rest);
            (hex, Some(name.to_string()))
        }
        None => (line, None),
    };
    Ok((hex.to_string(), name))
}

/// Compares the backup with its sidecar. `sha256` is the backup's already computed SHA-256;
/// the MD5 is computed only for an `.md5` sidecar.
pub fn verify(file: &BackupFile, sidecar: &Sidecar, sha256: &str) -> Result<(), String> {
    let actual = match sidecar.algorithm {
        Algorithm::Sha256 => sha256.to_ascii_lowercase(),
        Algorithm::Md5 => digest::<md5::Md5>(file)
            .map_err(|e| format!("cannot read {} to hash it: {e}", file.path.display()))?,
    };
    if actual == sidecar.expected {
        return Ok(());
    }
    Err(format!(
        "{} mismatch: {} has {actual}, but {} says {}",
        sidecar.algorithm.name(),
        file.path.display(),
        sidecar.path.display(),
        sidecar.expected
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const HELLO_MD5: &str = "5d41402abc4b2a76b9719d911017c592";

    fn backup(path: &Path) -> BackupFile {
        BackupFile {
            path: path.to_path_buf(),
            size: 0,
            modified: jiff::Timestamp::UNIX_EPOCH,
            directory: path.is_dir(),
        }
    }

    fn hello() -> (tempfile::TempDir, BackupFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.dump");
        std::fs::write(&path, b"hello").unwrap();
        let file = backup(&path);
        (dir, file)
    }

    #[test]
    fn a_file_hashes_to_its_sha256() {
        let (_dir, file) = hello();
        assert_eq!(sha256(&file).unwrap(), HELLO_SHA256);
    }

    #[test]
    fn a_directory_hashes_to_the_sha256_of_its_sorted_sha256sum_listing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("toc.dat"), b"hello").unwrap();
        std::fs::write(dir.path().join("3343.dat.gz"), b"").unwrap();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let listing = format!("{empty}  3343.dat.gz\n{HELLO_SHA256}  toc.dat\n");
        let expected = hex::encode(sha2::Sha256::digest(listing.as_bytes()));
        assert_eq!(sha256(&backup(dir.path())).unwrap(), expected);
    }

    #[test]
    fn the_sha256_sidecar_is_preferred_and_every_form_is_read() {
        let (dir, file) = hello();
        let path = dir.path().join("app.dump.sha256");
        std::fs::write(dir.path().join("app.dump.md5"), HELLO_MD5).unwrap();
        for text in [
            format!("{HELLO_SHA256}\n"),
            format!("{HELLO_SHA256}  app.dump\n"),
            format!("{HELLO_SHA256} */backups/app.dump\n"),
            format!("SHA256 (app.dump) = {}\n", HELLO_SHA256.to_uppercase()),
            format!("{HELLO_MD5}  other.dump\n{HELLO_SHA256}  app.dump\n"),
        ] {
            std::fs::write(&path, &text).unwrap();
            let found = sidecar(&file).unwrap().unwrap();
            assert_eq!(found.algorithm, Algorithm::Sha256, "{text}");
            assert_eq!(found.expected, HELLO_SHA256, "{text}");
            assert_eq!(found.path, path);
            verify(&file, &found, HELLO_SHA256).unwrap();
        }
    }

    #[test]
    fn an_md5_sidecar_is_compared_with_a_computed_md5() {
        let (dir, file) = hello();
        std::fs::write(
            dir.path().join("app.dump.md5"),
            format!("MD5 (app.dump) = {HELLO_MD5}"),
        )
        .unwrap();
        let found = sidecar(&file).unwrap().unwrap();
        assert_eq!(found.algorithm, Algorithm::Md5);
        verify(&file, &found, HELLO_SHA256).unwrap();
    }

    #[test]
    fn no_sidecar_is_none() {
        let (_dir, file) = hello();
        assert_eq!(sidecar(&file).unwrap(), None);
    }

    #[test]
    fn a_mismatch_names_both_checksums_and_the_sidecar() {
        let (dir, file) = hello();
        let path = dir.path().join("app.dump.md5");
        let wrong = "0".repeat(32);
        std::fs::write(&path, format!("{wrong}  app.dump\n")).unwrap();
        let found = sidecar(&file).unwrap().unwrap();
        assert_eq!(
            verify(&file, &found, HELLO_SHA256).unwrap_err(),
            format!(
                "md5 mismatch: {} has {HELLO_MD5}, but {} says {wrong}",
                file.path.display(),
                path.display()
            )
        );
    }

    #[test]
    fn a_malformed_sidecar_is_an_error_naming_it_and_the_problem() {
        let (dir, file) = hello();
        let path = dir.path().join("app.dump.sha256");
        let cases = [
            ("\n\n", "is empty".to_string()),
            (
                "abc123  app.dump\n",
                "does not hold a sha256 checksum: \"abc123\" is not 64 hex digits".to_string(),
            ),
            (
                &*format!("MD5 (app.dump) = {HELLO_MD5}\n"),
                format!(
                    "has a line \"MD5 (app.dump) = {HELLO_MD5}\" that is not a sha256 checksum"
                ),
            ),
            (
                &*format!("{HELLO_SHA256}  a.dump\n{HELLO_SHA256}  b.dump\n"),
                "has 2 entries and none is for app.dump".to_string(),
            ),
        ];
        for (text, problem) in cases {
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                sidecar(&file).unwrap_err(),
                format!("the checksum file {} {problem}", path.display())
            );
        }
    }

    #[test]
    fn an_unreadable_sidecar_is_an_error_naming_it() {
        let (dir, file) = hello();
        // A directory in the sidecar's place cannot be read as a file, even by root.
        let path = dir.path().join("app.dump.sha256");
        std::fs::create_dir(&path).unwrap();
        let error = sidecar(&file).unwrap_err();
        assert!(
            error.starts_with(&format!(
                "cannot read the checksum file {}: ",
                path.display()
            )),
            "{error}"
        );
    }
}
