//! Finding the backup to check: the newest match of the policy's path or glob, or a file a
//! run names explicitly.
//!
//! Backup jobs leave more than dumps next to their dumps: checksum sidecars, files still being
//! written, hidden scratch files. None of those is a backup, so none may win "newest"; choosing a
//! half-written `.partial` file would report a healthy backup job as broken.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A backup found on disk: a dump file, or the directory of a `pg_dump -Fd` dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFile {
    pub path: PathBuf,
    /// Bytes; for a directory dump the sum of its regular files.
    pub size: u64,
    /// For a directory dump the newest modification among its files: the directory's own
    /// mtime changes only when entries are added or removed, not when pg_dump finishes
    /// writing one.
    pub modified: jiff::Timestamp,
    pub directory: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the backup path {0} is not absolute")]
    NotAbsolute(String),
    #[error(
        "the backup path {pattern} is not a valid glob pattern: {message} (at character {position})"
    )]
    Pattern {
        pattern: String,
        message: &'static str,
        position: usize,
    },
    #[error("no backup matches {pattern}{}", ignored_note(*.ignored))]
    NoMatch { pattern: String, ignored: usize },
    #[error("the backup {} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{} is a directory without toc.dat, so not a pg_dump directory-format dump",
        .0.display()
    )]
    NotADumpDirectory(PathBuf),
    #[error("{} is neither a regular file nor a directory", .0.display())]
    NotAFile(PathBuf),
}

fn ignored_note(ignored: usize) -> String {
    match ignored {
        0 => String::new(),
        n => format!(
            " ({n} ignored: checksum sidecars, files still being written, hidden files and \
             directories without toc.dat are not backups)"
        ),
    }
}

fn io_error(path: &Path, source: io::Error) -> SourceError {
    SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The newest backup matching `pattern` (an absolute path or glob): the latest modification
/// time wins, and on a tie the greatest path, so the choice never depends on directory order.
pub fn newest(pattern: &str) -> Result<BackupFile, SourceError> {
    if !Path::new(pattern).is_absolute() {
        return Err(SourceError::NotAbsolute(pattern.to_string()));
    }
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let paths = glob::glob_with(pattern, options).map_err(|e| SourceError::Pattern {
        pattern: pattern.to_string(),
        message: e.msg,
        position: e.pos,
    })?;
    let mut best: Option<BackupFile> = None;
    let mut ignored = 0;
    for entry in paths {
        // An unreadable directory on the way is reported, not skipped: skipping it could
        // silently pick an older backup from a readable sibling.
        let path = entry.map_err(|e| {
            let path = e.path().to_path_buf();
            io_error(&path, e.into())
        })?;
        if !looks_like_backup(&path) {
            ignored += 1;
            continue;
        }
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            // Rotated away between the listing and now, or a dangling symlink.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&path, e)),
        };
        let found = if metadata.is_dir() {
            match describe_directory(&path)? {
                Some(found) => found,
                None => {
                    ignored += 1;
                    continue;
                }
            }
        } else if metadata.is_file() {
            BackupFile {
                size: metadata.len(),
                modified: timestamp(&path, metadata.modified())?,
                path,
                directory: false,
            }
        } else {
            ignored += 1;
            continue;
        };
        let newer = best
            .as_ref()
            .is_none_or(|best| (found.modified, &found.path) > (best.modified, &best.path));
        if newer {
            best = Some(found);
        }
    }
    let Some(best) = best else {
        return Err(SourceError::NoMatch {
            pattern: pattern.to_string(),
            ignored,
        });
    };
    check_readable(&best)?;
    Ok(best)
}

/// An explicitly named backup (an on-demand run). The name rules of [`newest`] do not apply:
/// whoever names a file means it.
pub fn file(path: &str) -> Result<BackupFile, SourceError> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(SourceError::NotAbsolute(path.display().to_string()));
    }
    let metadata = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SourceError::NotFound(path.to_path_buf()),
        _ => io_error(path, e),
    })?;
    let found = if metadata.is_dir() {
        describe_directory(path)?.ok_or_else(|| SourceError::NotADumpDirectory(path.into()))?
    } else if metadata.is_file() {
        BackupFile {
            path: path.to_path_buf(),
            size: metadata.len(),
            modified: timestamp(path, metadata.modified())?,
            directory: false,
        }
    } else {
        return Err(SourceError::NotAFile(path.to_path_buf()));
    };
    check_readable(&found)?;
    Ok(found)
}

/// Whether a file name can be a finished backup.
fn looks_like_backup(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        // A non-UTF-8 name can still be a backup; the rules below are about ASCII suffixes.
        return path.file_name().is_some();
    };
    !(name.starts_with('.')
        || [".sha256", ".md5", ".tmp", ".partial"]
            .iter()
            .any(|suffix| name.ends_with(suffix)))
}

/// A `pg_dump -Fd` directory described as one backup, or `None` when it has no `toc.dat`.
fn describe_directory(path: &Path) -> Result<Option<BackupFile>, SourceError> {
    match fs::metadata(path.join("toc.dat")) {
        Ok(metadata) if metadata.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, e)),
    }
    let mut size = 0;
    let mut modified = None;
    for entry in fs::read_dir(path).map_err(|e| io_error(path, e))? {
        let entry = entry.map_err(|e| io_error(path, e))?;
        let entry_path = entry.path();
        let metadata = fs::metadata(&entry_path).map_err(|e| io_error(&entry_path, e))?;
        if !metadata.is_file() {
            continue;
        }
        size += metadata.len();
        let stamp = timestamp(&entry_path, metadata.modified())?;
        modified = modified.max(Some(stamp));
    }
    let modified = match modified {
        Some(modified) => modified,
        // Unreachable in practice (toc.dat is a regular file), but a listing can race.
        None => timestamp(path, fs::metadata(path).and_then(|m| m.modified()))?,
    };
    Ok(Some(BackupFile {
        path: path.to_path_buf(),
        size,
        modified,
        directory: true,
    }))
}

fn timestamp(
    path: &Path,
    modified: io::Result<SystemTime>,
) -> Result<jiff::Timestamp, SourceError> {
    let modified = modified.map_err(|e| io_error(path, e))?;
    jiff::Timestamp::try_from(modified).map_err(|e| {
        io_error(
            path,
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("its modification time is out of range: {e}"),
            ),
        )
    })
}

/// Opens the chosen backup once so that a permission problem is reported here, naming the
/// file, instead of as a confusing failure of a later check.
fn check_readable(found: &BackupFile) -> Result<(), SourceError> {
    let path = if found.directory {
        found.path.join("toc.dat")
    } else {
        found.path.clone()
    };
    fs::File::open(&path)
        .map(drop)
        .map_err(|e| io_error(&path, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    use super::*;

    fn touch(path: &Path, bytes: &[u8], seconds_ago: u64) {
        fs::write(path, bytes).unwrap();
        set_mtime(path, seconds_ago);
    }

    fn set_mtime(path: &Path, seconds_ago: u64) {
        let file = fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds_ago))
            .unwrap();
    }

    fn pattern(dir: &Path, glob: &str) -> String {
        dir.join(glob).display().to_string()
    }

    /// Root ignores file permissions, so permission tests would prove nothing there.
    fn running_as_root() -> bool {
        fs::read_to_string("/proc/self/status")
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
    }

    #[test]
    fn the_newest_match_by_modification_time_is_chosen() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("b.dump"), b"old", 300);
        touch(&dir.path().join("a.dump"), b"newer", 100);
        touch(&dir.path().join("c.dump"), b"oldest", 900);
        let found = newest(&pattern(dir.path(), "*.dump")).unwrap();
        assert_eq!(found.path, dir.path().join("a.dump"));
        assert_eq!(found.size, 5);
        assert!(!found.directory);
    }

    #[test]
    fn a_tie_in_modification_time_goes_to_the_greatest_path() {
        let dir = tempfile::tempdir().unwrap();
        let when = SystemTime::now() - Duration::from_secs(60);
        for name in ["b.dump", "c.dump", "a.dump"] {
            let path = dir.path().join(name);
            fs::write(&path, b"x").unwrap();
            fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let found = newest(&pattern(dir.path(), "*.dump")).unwrap();
        assert_eq!(found.path, dir.path().join("c.dump"));
    }

    #[test]
    fn sidecars_in_progress_and_hidden_files_are_never_chosen() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("app-1.dump"), b"real", 600);
        for name in [
            "app-2.dump.sha256",
            "app-2.dump.md5",
            "app-2.dump.tmp",
            "app-2.dump.partial",
            ".app-2.dump",
        ] {
            touch(&dir.path().join(name), b"x", 1);
        }
        let found = newest(&pattern(dir.path(), "app-*")).unwrap();
        assert_eq!(found.path, dir.path().join("app-1.dump"));
    }

    #[test]
    fn a_directory_counts_only_with_toc_dat_and_sums_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let plain_dir = dir.path().join("scratch");
        fs::create_dir(&plain_dir).unwrap();
        touch(&plain_dir.join("notes"), b"x", 1);
        let dump = dir.path().join("app.dir");
        fs::create_dir(&dump).unwrap();
        touch(&dump.join("toc.dat"), b"PGDMP123", 500);
        touch(&dump.join("3343.dat.gz"), b"data", 200);
        touch(&dir.path().join("old.dump"), b"x", 400);

        let found = newest(&pattern(dir.path(), "*")).unwrap();
        assert_eq!(found.path, dump);
        assert!(found.directory);
        assert_eq!(found.size, 12);
        let expected = jiff::Timestamp::try_from(
            fs::metadata(dump.join("3343.dat.gz"))
                .unwrap()
                .modified()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(found.modified, expected);
    }

    #[test]
    fn no_match_names_the_pattern_and_what_was_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let glob = pattern(dir.path(), "*.dump");
        let error = newest(&glob).unwrap_err().to_string();
        assert_eq!(error, format!("no backup matches {glob}"));

        touch(&dir.path().join("x.dump.partial"), b"x", 1);
        let error = newest(&pattern(dir.path(), "*.dump*"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("no backup matches "), "{error}");
        assert!(error.contains("(1 ignored: checksum sidecars"), "{error}");
    }

    #[test]
    fn relative_paths_and_invalid_patterns_are_refused() {
        assert_eq!(
            newest("backups/*.dump").unwrap_err().to_string(),
            "the backup path backups/*.dump is not absolute"
        );
        assert_eq!(
            file("app.dump").unwrap_err().to_string(),
            "the backup path app.dump is not absolute"
        );
        let error = newest("/backups/[.dump").unwrap_err().to_string();
        assert!(
            error.starts_with("the backup path /backups/[.dump is not a valid glob pattern: "),
            "{error}"
        );
    }

    #[test]
    fn an_unreadable_directory_on_the_way_is_an_error_naming_it() {
        if running_as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        fs::create_dir(&locked).unwrap();
        touch(&locked.join("app.dump"), b"x", 1);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let error = newest(&pattern(dir.path(), "*/*.dump"));
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        let error = error.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("cannot read {}: ", locked.display())),
            "{error}"
        );
        assert!(error.contains("Permission denied"), "{error}");
    }

    #[test]
    fn an_io_error_on_a_match_is_reported_not_skipped() {
        // A symlink loop fails to stat even for root, unlike a permission problem.
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join("a.dump"), b"x", 600);
        let looped = dir.path().join("b.dump");
        std::os::unix::fs::symlink(&looped, &looped).unwrap();
        let error = newest(&pattern(dir.path(), "*.dump"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!("cannot read {}: ", looped.display())),
            "{error}"
        );
        assert!(error.contains("symbolic links"), "{error}");
    }

    #[test]
    fn an_unreadable_newest_file_is_an_error_naming_it() {
        if running_as_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.dump");
        touch(&path, b"x", 1);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o000)).unwrap();
        let error = newest(&pattern(dir.path(), "*.dump"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(&format!(
                "cannot read {}: Permission denied",
                path.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn an_explicit_file_is_described_or_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.dump.tmp");
        touch(&path, b"abc", 10);
        let found = file(path.to_str().unwrap()).unwrap();
        assert_eq!(found.size, 3);

        let missing = dir.path().join("gone.dump");
        assert_eq!(
            file(missing.to_str().unwrap()).unwrap_err().to_string(),
            format!("the backup {} does not exist", missing.display())
        );
        assert_eq!(
            file(dir.path().to_str().unwrap()).unwrap_err().to_string(),
            format!(
                "{} is a directory without toc.dat, so not a pg_dump directory-format dump",
                dir.path().display()
            )
        );
    }
}
