//! What a backup is, read from its content: pg_dump's format, an outer compression, and the
//! versions and database its header names.
//!
//! The name is never trusted: `nightly.dump` may be a plain script, `app.sql.gz` a custom
//! archive, and a job that renamed its outputs must not turn into a restore of the wrong kind.
//! A compressed dump is decompressed to its end here, since a gzip CRC or zstd checksum error is
//! only found there and a restore that dies after an hour on a broken stream is a worse report.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use super::source::BackupFile;
use super::{Compression, DumpFormat};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    pub format: DumpFormat,
    pub compression: Compression,
    /// The archive's version, "1.14" (custom, tar and directory dumps).
    pub archive_version: Option<String>,
    /// The version of the server the dump was made from, "15.18", without the packager's
    /// suffix ("(Debian 15.18-1.pgdg120+1)").
    pub server_version: Option<String>,
    /// The leading number of `server_version`: 15 for "15.18", 9 for "9.6.24".
    pub server_major: Option<u32>,
    pub pg_dump_version: Option<String>,
    /// The dumped database's name, when the header says it (archives do, plain dumps do not).
    pub database: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError(message.into()))
}

/// How much of the start of a dump is kept for recognising it: far more than any header.
const HEAD: usize = 64 * 1024;
/// How much of the end of a plain dump is kept for its completion marker.
const TAIL: usize = 8 * 1024;

/// pg_dump's archive format codes (`ArchiveFormat` in pg_backup.h).
const ARCH_CUSTOM: u8 = 1;
const ARCH_TAR: u8 = 3;
const ARCH_DIRECTORY: u8 = 5;

/// The newest archive version pg_restore reads (`K_VERS_MAX` minor; PostgreSQL 17 writes it).
const NEWEST_ARCHIVE_MINOR: u8 = 16;

pub fn detect(file: &BackupFile) -> Result<Detected, FormatError> {
    if file.directory {
        return detect_directory(file);
    }
    let path = &file.path;
    let mut reader = BufReader::with_capacity(1 << 20, open(path)?);
    let magic = reader
        .fill_buf()
        .map_err(|e| FormatError(format!("cannot read {}: {e}", path.display())))?;
    if magic.is_empty() {
        return fail("empty file");
    }
    let compression = if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    match compression {
        Compression::None => detect_uncompressed(path, reader),
        Compression::Gzip => {
            detect_compressed(flate2::bufread::MultiGzDecoder::new(reader), compression)
        }
        Compression::Zstd => detect_compressed(ZstdFrames::new(reader), compression),
    }
}

fn open(path: &Path) -> Result<File, FormatError> {
    File::open(path).map_err(|e| FormatError(format!("cannot open {}: {e}", path.display())))
}

fn detect_directory(file: &BackupFile) -> Result<Detected, FormatError> {
    let toc = file.path.join("toc.dat");
    let mut head = Vec::new();
    open(&toc)?
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(|e| FormatError(format!("cannot read {}: {e}", toc.display())))?;
    if !head.starts_with(b"PGDMP") {
        return fail(format!(
            "{} is not a pg_dump table of contents: it starts with bytes {}",
            toc.display(),
            hex_prefix(&head)
        ));
    }
    // pg_dump writes the tar code into a directory dump's toc.dat: the directory layout is the
    // tar layout unpacked, and pg_restore reads both alike.
    archive(
        &head,
        &[ARCH_TAR, ARCH_DIRECTORY],
        DumpFormat::Directory,
        Compression::None,
    )
}

fn detect_uncompressed(path: &Path, mut reader: BufReader<File>) -> Result<Detected, FormatError> {
    let unreadable = |e: io::Error| FormatError(format!("cannot read {}: {e}", path.display()));
    let mut head = Vec::with_capacity(HEAD);
    (&mut reader)
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    let detected = classify(&head, Compression::None)?;
    if detected.format == DumpFormat::Plain {
        // Only the end matters for the completion marker: no need to read gigabytes.
        let mut file = reader.into_inner();
        let size = file.seek(SeekFrom::End(0)).map_err(unreadable)?;
        let start = size.saturating_sub(TAIL as u64);
        let mut tail = Vec::with_capacity(TAIL);
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(unreadable)?;
        check_plain_trailer(&tail)?;
    }
    Ok(detected)
}

/// Decompresses the whole stream (its integrity is checked at its end), keeping the start to
/// recognise the dump and the end for a plain dump's completion marker.
fn detect_compressed(
    mut reader: impl Read,
    compression: Compression,
) -> Result<Detected, FormatError> {
    let corrupt = |e: io::Error| {
        FormatError(format!(
            "the {compression} stream is corrupt or truncated: {e}"
        ))
    };
    let mut buffer = vec![0; 1 << 20];
    let mut head = Vec::with_capacity(HEAD);
    // The last TAIL bytes seen, kept in a window twice that size so that it is compacted only
    // once per TAIL bytes instead of on every read.
    let mut tail: Vec<u8> = Vec::with_capacity(2 * TAIL);
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e)),
        };
        let chunk = &buffer[..n];
        if head.len() < HEAD {
            let take = chunk.len().min(HEAD - head.len());
            head.extend_from_slice(&chunk[..take]);
        }
        if chunk.len() >= TAIL {
            tail.clear();
            tail.extend_from_slice(&chunk[chunk.len() - TAIL..]);
        } else {
            if tail.len() + chunk.len() > 2 * TAIL {
                tail.drain(..tail.len() + chunk.len() - TAIL);
            }
            tail.extend_from_slice(chunk);
        }
    }
    if head.is_empty() {
        return fail(format!(
            "the {compression} stream decompresses to an empty file"
        ));
    }
    let detected = classify(&head, compression)?;
    if detected.format == DumpFormat::Plain {
        let start = tail.len().saturating_sub(TAIL);
        check_plain_trailer(&tail[start..])?;
    }
    Ok(detected)
}

/// Recognises a dump from its first bytes (after any outer compression).
fn classify(head: &[u8], compression: Compression) -> Result<Detected, FormatError> {
    if head.is_empty() {
        return fail("empty file");
    }
    if head.starts_with(b"PGDMP") {
        return archive(head, &[ARCH_CUSTOM], DumpFormat::Custom, compression);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        let name_end = head[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&head[..name_end]);
        if name != "toc.dat" {
            return fail(format!(
                "not a PostgreSQL dump: a tar archive whose first member is {name:?}, not pg_dump's toc.dat"
            ));
        }
        let toc = head.get(512..).unwrap_or_default();
        if !toc.starts_with(b"PGDMP") {
            if toc.len() < 5 {
                return fail(format!(
                    "truncated: the archive header ends after {} bytes",
                    toc.len()
                ));
            }
            return fail(format!(
                "not a PostgreSQL dump: the tar member toc.dat starts with bytes {}",
                hex_prefix(toc)
            ));
        }
        return archive(toc, &[ARCH_TAR], DumpFormat::Tar, compression);
    }
    if let Some(detected) = plain(head, compression) {
        return Ok(detected);
    }
    let what = match compression {
        Compression::None => "it starts".to_string(),
        other => format!("its {other}-decompressed content starts"),
    };
    fail(format!(
        "not a PostgreSQL dump: {what} with bytes {}",
        hex_prefix(head)
    ))
}

fn hex_prefix(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut text = shown.join(" ");
    if bytes.len() > 8 {
        text.push_str(" ...");
    }
    text
}

/// A reader of pg_dump's archive header (pg_backup_archiver.c `ReadHead`, `ReadInt`,
/// `ReadStr`).
struct Header<'a> {
    bytes: &'a [u8],
    at: usize,
    int_size: usize,
    /// Archive 1.0 has no sign byte before integers.
    signed: bool,
}

impl Header<'_> {
    fn truncated(&self) -> FormatError {
        FormatError(format!(
            "truncated: the archive header ends after {} bytes",
            self.bytes.len()
        ))
    }

    fn byte(&mut self) -> Result<u8, FormatError> {
        let byte = *self.bytes.get(self.at).ok_or_else(|| self.truncated())?;
        self.at += 1;
        Ok(byte)
    }

    fn int(&mut self) -> Result<i64, FormatError> {
        let negative = self.signed && self.byte()? != 0;
        let mut value: i64 = 0;
        for i in 0..self.int_size {
            value |= i64::from(self.byte()?) << (8 * i);
        }
        Ok(if negative { -value } else { value })
    }

    fn string(&mut self) -> Result<Option<String>, FormatError> {
        let length = self.int()?;
        if length < 0 {
            return Ok(None);
        }
        // Names and versions are short; a huge length is damage, not a long name.
        if length > 4096 {
            return fail(format!(
                "the archive header is corrupt: a {length}-byte string at byte {}",
                self.at
            ));
        }
        let end = self.at + length as usize;
        let text = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| self.truncated())?;
        self.at = end;
        Ok(Some(String::from_utf8_lossy(text).into_owned()))
    }
}

/// Reads the header of a custom archive or of a tar or directory dump's toc.dat.
fn archive(
    bytes: &[u8],
    codes: &[u8],
    format: DumpFormat,
    compression: Compression,
) -> Result<Detected, FormatError> {
    let mut header = Header {
        bytes,
        at: 5,
        int_size: 4,
        signed: true,
    };
    let major = header.byte()?;
    let minor = header.byte()?;
    let revision = if major > 1 || (major == 1 && minor > 0) {
        header.byte()?
    } else {
        0
    };
    let version = if revision == 0 {
        format!("{major}.{minor}")
    } else {
        format!("{major}.{minor}.{revision}")
    };
    if major != 1 || minor > NEWEST_ARCHIVE_MINOR {
        return fail(format!(
            "unknown archive version {version}: pg_dump archives 1.0 to 1.{NEWEST_ARCHIVE_MINOR} are understood"
        ));
    }
    header.signed = minor > 0;
    let int_size = header.byte()?;
    if !(1..=8).contains(&int_size) {
        return fail(format!(
            "the archive header is corrupt: an integer size of {int_size} bytes"
        ));
    }
    header.int_size = usize::from(int_size);
    if minor >= 7 {
        let _offset_size = header.byte()?;
    }
    let code = header.byte()?;
    if !codes.contains(&code) {
        let name = match code {
            ARCH_CUSTOM => "custom".to_string(),
            ARCH_TAR => "tar".to_string(),
            ARCH_DIRECTORY => "directory".to_string(),
            other => format!("unknown ({other})"),
        };
        return fail(format!(
            "the archive header says format {name}, which does not fit a {format} dump"
        ));
    }
    if minor >= 15 {
        let _algorithm = header.byte()?;
    } else if minor >= 4 {
        let _level = header.int()?;
    } else if minor >= 2 {
        let _level = header.byte()?;
    }
    let mut database = None;
    if minor >= 4 {
        for _ in 0..7 {
            let _creation_time_field = header.int()?;
        }
        database = header.string()?;
    }
    let (mut server, mut pg_dump) = (None, None);
    if minor >= 10 {
        server = header.string()?;
        pg_dump = header.string()?;
    }
    let server_version = server.as_deref().map(first_word);
    Ok(Detected {
        format,
        compression,
        archive_version: Some(version),
        server_major: server_version.as_deref().and_then(major_of),
        server_version,
        pg_dump_version: pg_dump.as_deref().map(first_word),
        database,
    })
}

/// "15.18 (Debian 15.18-1.pgdg120+1)" → "15.18".
fn first_word(version: &str) -> String {
    version
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// "15.18" → 15, "9.6.24" → 9, "17devel" → 17.
fn major_of(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

const PLAIN_MARKERS: [&str; 2] = [
    "-- PostgreSQL database dump",
    "-- PostgreSQL database cluster dump",
];

/// A plain (SQL script) dump of pg_dump, or of pg_dumpall, from its first lines.
fn plain(head: &[u8], compression: Compression) -> Option<Detected> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines().map(|line| line.trim_end_matches('\r'));
    let is_plain = lines
        .clone()
        .filter(|line| !line.trim().is_empty())
        .take(5)
        .any(|line| PLAIN_MARKERS.contains(&line));
    if !is_plain {
        return None;
    }
    let (mut server, mut pg_dump) = (None, None);
    for line in lines.by_ref().take(200) {
        if let Some(version) = line.strip_prefix("-- Dumped from database version ") {
            server.get_or_insert_with(|| first_word(version));
        } else if let Some(version) = line.strip_prefix("-- Dumped by pg_dump version ") {
            pg_dump.get_or_insert_with(|| first_word(version));
        }
    }
    Some(Detected {
        format: DumpFormat::Plain,
        compression,
        archive_version: None,
        server_major: server.as_deref().and_then(major_of),
        server_version: server,
        pg_dump_version: pg_dump,
        database: None,
    })
}

/// pg_dump ends a plain dump with a "dump complete" comment; only a dump that ran to its end
/// has it. Since PostgreSQL 15.14, 16.10 and 17.6 an `\unrestrict KEY` line follows it.
fn check_plain_trailer(tail: &[u8]) -> Result<(), FormatError> {
    let text = String::from_utf8_lossy(tail);
    let mut lines = text
        .lines()
        .rev()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
        .peekable();
    if lines
        .peek()
        .is_some_and(|line| line.starts_with("\\unrestrict "))
    {
        lines.next();
    }
    let closing = lines.next();
    let marker = lines.next();
    let complete = closing == Some("--")
        && marker.is_some_and(|marker| {
            PLAIN_MARKERS
                .iter()
                .any(|start| marker.strip_prefix(start) == Some(" complete"))
        });
    if complete {
        Ok(())
    } else {
        fail("truncated: the dump does not end with pg_dump's completion marker")
    }
}

/// A zstd stream of any number of frames, as the `zstd` format allows (`cat a.zst b.zst`,
/// pzstd's skippable frames), with each frame's content checksum verified: ruzstd's
/// `StreamingDecoder` reads one frame and leaves the checksum to its caller.
pub(crate) struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    pub(crate) fn new(source: R) -> Self {
        ZstdFrames {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.init(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let skipped = io::copy(
                            &mut (&mut self.source).take(u64::from(length)),
                            &mut io::sink(),
                        )?;
                        if skipped != u64::from(length) {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the stream ends inside a skippable frame",
                            ));
                        }
                    }
                    Err(e) => return Err(invalid(e)),
                }
                continue;
            }
            let decoder = &mut self.decoder;
            while decoder.can_collect() < buf.len() && !decoder.is_finished() {
                let wanted = buf.len() - decoder.can_collect();
                decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(wanted))
                    .map_err(invalid)?;
            }
            let n = decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if let (Some(stored), Some(computed)) = (
                decoder.get_checksum_from_data(),
                decoder.get_calculated_checksum(),
            ) && stored != computed
            {
                return Err(invalid(format!(
                    "content checksum mismatch: the frame says {stored:08x}, its content hashes to {computed:08x}"
                )));
            }
            self.in_frame = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/backup/testdata")
            .join(name)
    }

    fn backup(path: PathBuf) -> BackupFile {
        let directory = path.is_dir();
        BackupFile {
            path,
            size: 0,
            modified: jiff::Timestamp::UNIX_EPOCH,
            directory,
        }
    }

    fn bytes_file(bytes: &[u8]) -> (tempfile::TempDir, BackupFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup");
        std::fs::write(&path, bytes).unwrap();
        (dir, backup(path))
    }

    fn detect_bytes(bytes: &[u8]) -> Result<Detected, FormatError> {
        let (_dir, file) = bytes_file(bytes);
        detect(&file)
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(testdata(name)).unwrap()
    }

    fn pg15(format: DumpFormat, compression: Compression) -> Detected {
        Detected {
            format,
            compression,
            archive_version: Some("1.14".into()),
            server_version: Some("15.18".into()),
            server_major: Some(15),
            pg_dump_version: Some("15.18".into()),
            database: Some("fixture_app".into()),
        }
    }

    #[test]
    fn a_custom_archive_reports_its_versions_and_database() {
        let detected = detect(&backup(testdata("app.dump"))).unwrap();
        assert_eq!(detected, pg15(DumpFormat::Custom, Compression::None));
    }

    #[test]
    fn a_tar_archive_is_read_through_its_toc_dat() {
        let detected = detect(&backup(testdata("app.tar"))).unwrap();
        assert_eq!(detected, pg15(DumpFormat::Tar, Compression::None));
    }

    #[test]
    fn a_directory_dump_is_read_through_its_toc_dat() {
        let detected = detect(&backup(testdata("app.dir"))).unwrap();
        assert_eq!(detected, pg15(DumpFormat::Directory, Compression::None));
    }

    #[test]
    fn a_gzip_compressed_custom_archive_is_found_by_content() {
        let detected = detect(&backup(testdata("app.dump.gz"))).unwrap();
        assert_eq!(detected, pg15(DumpFormat::Custom, Compression::Gzip));
    }

    #[test]
    fn a_plain_dump_reports_the_versions_of_its_header_comments() {
        let detected = detect(&backup(testdata("app.sql"))).unwrap();
        assert_eq!(
            detected,
            Detected {
                archive_version: None,
                database: None,
                ..pg15(DumpFormat::Plain, Compression::None)
            }
        );
    }

    #[test]
    fn a_zstd_compressed_plain_dump_is_decompressed_and_checked() {
        let detected = detect(&backup(testdata("app.sql.zst"))).unwrap();
        assert_eq!(detected.format, DumpFormat::Plain);
        assert_eq!(detected.compression, Compression::Zstd);
        assert_eq!(detected.server_version.as_deref(), Some("15.18"));
    }

    #[test]
    fn a_zstd_stream_of_two_frames_is_read_to_the_end() {
        // `cat part1.zst part2.zst` is one valid zstd stream; the trailer is in the second.
        let zst = read("app.sql.zst");
        let plain = read("app.sql");
        let mut two = zst.clone();
        two.extend_from_slice(&zst);
        let mut decoded = Vec::new();
        ZstdFrames::new(&two[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded.len(), 2 * plain.len());
        assert!(detect_bytes(&two).is_ok());
    }

    #[test]
    fn the_file_name_does_not_decide_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nightly.sql.gz");
        std::fs::copy(testdata("app.dump"), &path).unwrap();
        let detected = detect(&backup(path)).unwrap();
        assert_eq!(detected.format, DumpFormat::Custom);
        assert_eq!(detected.compression, Compression::None);
    }

    #[test]
    fn a_newer_archive_header_reports_its_versions() {
        // A PostgreSQL 17 custom archive: version 1.16 adds a compression-algorithm byte in
        // place of the compression level integer.
        let original = read("app.dump");
        let mut patched = original[..11].to_vec();
        patched[6] = 16;
        patched.push(0); // compression algorithm: none
        let rest = &original[11 + 5..]; // after the 1.14 level integer (sign + 4 bytes)
        let mut header = Header {
            bytes: rest,
            at: 0,
            int_size: 4,
            signed: true,
        };
        for _ in 0..7 {
            header.int().unwrap();
        }
        header.string().unwrap();
        let database_end = header.at;
        patched.extend_from_slice(&rest[..database_end]);
        for version in [
            "17.2 (Debian 17.2-1.pgdg120+1)",
            "17.2 (Debian 17.2-1.pgdg120+1)",
        ] {
            patched.push(0);
            patched.extend_from_slice(&(version.len() as u32).to_le_bytes());
            patched.extend_from_slice(version.as_bytes());
        }
        let detected = detect_bytes(&patched).unwrap();
        assert_eq!(detected.archive_version.as_deref(), Some("1.16"));
        assert_eq!(detected.server_version.as_deref(), Some("17.2"));
        assert_eq!(detected.server_major, Some(17));
        assert_eq!(detected.pg_dump_version.as_deref(), Some("17.2"));
        assert_eq!(detected.database.as_deref(), Some("fixture_app"));
    }

    #[test]
    fn an_unknown_archive_version_is_named() {
        let mut bytes = read("app.dump");
        bytes[6] = 17;
        assert_eq!(
            detect_bytes(&bytes).unwrap_err().to_string(),
            "unknown archive version 1.17: pg_dump archives 1.0 to 1.16 are understood"
        );
        bytes[5] = 2;
        bytes[7] = 3;
        assert_eq!(
            detect_bytes(&bytes).unwrap_err().to_string(),
            "unknown archive version 2.17.3: pg_dump archives 1.0 to 1.16 are understood"
        );
    }

    #[test]
    fn a_header_cut_short_is_reported_as_truncated() {
        let bytes = read("app.dump");
        assert_eq!(
            detect_bytes(&bytes[..60]).unwrap_err().to_string(),
            "truncated: the archive header ends after 60 bytes"
        );
        assert_eq!(
            detect_bytes(&bytes[..7]).unwrap_err().to_string(),
            "truncated: the archive header ends after 7 bytes"
        );
    }

    #[test]
    fn a_custom_header_in_a_tar_member_must_say_tar() {
        let mut bytes = read("app.tar");
        bytes[512 + 10] = ARCH_CUSTOM;
        assert_eq!(
            detect_bytes(&bytes).unwrap_err().to_string(),
            "the archive header says format custom, which does not fit a tar dump"
        );
    }

    #[test]
    fn a_plain_dump_without_its_completion_marker_is_truncated() {
        let plain = read("app.sql");
        let cut = &plain[..plain.len() - 200];
        let expected = "truncated: the dump does not end with pg_dump's completion marker";
        assert_eq!(detect_bytes(cut).unwrap_err().to_string(), expected);
        assert_eq!(detect_bytes(&gzip(cut)).unwrap_err().to_string(), expected);
    }

    #[test]
    fn the_completion_marker_may_be_followed_by_blank_lines_or_not_by_unrestrict() {
        let plain = String::from_utf8(read("app.sql")).unwrap();
        let unrestrict = plain.rfind("\\unrestrict").unwrap();
        let without = &plain[..unrestrict];
        assert!(detect_bytes(without.as_bytes()).is_ok());
        assert!(detect_bytes(format!("{plain}\n\n").as_bytes()).is_ok());
        assert!(detect_bytes(plain.replace('\n', "\r\n").as_bytes()).is_ok());
    }

    #[test]
    fn a_truncated_gzip_stream_is_corrupt() {
        let compressed = read("app.dump.gz");
        let message = detect_bytes(&compressed[..compressed.len() / 2])
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("the gzip stream is corrupt or truncated: "),
            "{message}"
        );
    }

    #[test]
    fn a_gzip_stream_with_a_wrong_crc_is_corrupt() {
        let mut compressed = read("app.dump.gz");
        let crc = compressed.len() - 8;
        compressed[crc] ^= 0xff;
        let message = detect_bytes(&compressed).unwrap_err().to_string();
        assert!(
            message.starts_with("the gzip stream is corrupt or truncated: "),
            "{message}"
        );
    }

    #[test]
    fn a_damaged_zstd_stream_is_corrupt() {
        let compressed = read("app.sql.zst");
        let message = detect_bytes(&compressed[..compressed.len() - 10])
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("the zstd stream is corrupt or truncated: "),
            "{message}"
        );
        // The content checksum is the frame's last 4 bytes.
        let mut flipped = compressed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let message = detect_bytes(&flipped).unwrap_err().to_string();
        assert!(
            message
                .starts_with("the zstd stream is corrupt or truncated: content checksum mismatch"),
            "{message}"
        );
    }

    #[test]
    fn anything_else_is_not_a_dump_and_names_its_first_bytes() {
        assert_eq!(
            detect_bytes(b"PK\x03\x04\x14\x00\x00\x00\x08\x00rest")
                .unwrap_err()
                .to_string(),
            "not a PostgreSQL dump: it starts with bytes 50 4b 03 04 14 00 00 00 ..."
        );
        assert_eq!(
            detect_bytes(b"hello").unwrap_err().to_string(),
            "not a PostgreSQL dump: it starts with bytes 68 65 6c 6c 6f"
        );
        assert_eq!(
            detect_bytes(&gzip(b"SELECT 1;\n")).unwrap_err().to_string(),
            "not a PostgreSQL dump: its gzip-decompressed content starts with bytes 53 45 4c 45 43 54 20 31 ..."
        );
        assert_eq!(detect_bytes(b"").unwrap_err().to_string(), "empty file");
    }

    #[test]
    fn a_tar_archive_of_something_else_is_not_a_dump() {
        let mut bytes = read("app.tar");
        bytes[..7].copy_from_slice(b"abc.txt");
        assert_eq!(
            detect_bytes(&bytes).unwrap_err().to_string(),
            "not a PostgreSQL dump: a tar archive whose first member is \"abc.txt\", not pg_dump's toc.dat"
        );
    }

    #[test]
    fn a_directory_whose_toc_is_not_an_archive_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("toc.dat"), b"hello").unwrap();
        let message = detect(&backup(dir.path().to_path_buf()))
            .unwrap_err()
            .to_string();
        assert!(
            message.ends_with(
                "toc.dat is not a pg_dump table of contents: it starts with bytes 68 65 6c 6c 6f"
            ),
            "{message}"
        );
    }

    #[test]
    fn server_versions_are_cut_to_their_major() {
        assert_eq!(major_of("15.18"), Some(15));
        assert_eq!(major_of("9.6.24"), Some(9));
        assert_eq!(major_of("17devel"), Some(17));
        assert_eq!(major_of("devel"), None);
    }
}
