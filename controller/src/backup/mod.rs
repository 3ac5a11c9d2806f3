//! Backup validation: the checks of the ladder and the engine that restores a dump.
//!
//! Each check is a function of the backup file (and, for the restore and data checks, of a
//! throwaway server behind [`engine::RestoreEngine`]); [`crate::reconcile::backup::run`] runs
//! them in order and turns their outcomes into a run's status and report.

pub mod checksum;
pub mod engine;
pub mod format;
pub mod ladder;
pub mod report;
pub mod schedule;
pub mod source;
pub mod syntax;

use std::io::Read;
use std::path::{Path, PathBuf};

/// How pg_dump wrote the dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// `pg_dump -Fc`: one archive file.
    Custom,
    /// `pg_dump -Ft`: a tar archive.
    Tar,
    /// `pg_dump -Fd`: a directory with `toc.dat` and one file per table.
    Directory,
    /// `pg_dump` (`-Fp`): an SQL script for psql.
    Plain,
}

impl std::fmt::Display for DumpFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DumpFormat::Custom => "custom",
            DumpFormat::Tar => "tar",
            DumpFormat::Directory => "directory",
            DumpFormat::Plain => "plain",
        })
    }
}

/// A compression wrapped around the whole dump file (`dump.sql.gz`, `dump.tar.zst`), found
/// from the content. Compression inside an archive (pg_dump's own `-Z`) is pg_restore's
/// business and shows as `None` here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// A dump to restore: where it is and how to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// The file, or the directory of a directory-format dump.
    pub path: PathBuf,
    pub format: DumpFormat,
    pub compression: Compression,
    /// The database a plain dump switches to with `\connect` (made with `pg_dump -C`), if
    /// any: the restored data and the data checks are there.
    pub database: Option<String>,
}

/// Reads a dump file with its outer compression removed.
pub fn open(path: &Path, compression: Compression) -> std::io::Result<Box<dyn Read + Send>> {
    let file = std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(path)?);
    Ok(match compression {
        Compression::None => Box::new(file),
        // Multi-member: `cat a.gz b.gz` and pigz output are valid gzip streams.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        // Every frame, with its checksum checked: `StreamingDecoder` stops after the first
        // frame, so a multi-frame file (pzstd, `cat a.zst b.zst`) would read as truncated.
        Compression::Zstd => Box::new(format::ZstdFrames::new(file)),
    })
}
