//! Reading manifest files and directories from disk, defensively: what is read is only ever
//! regular files of bounded size, each directory once, and whatever cannot be read is named
//! with its path and reason, so that the caller can keep what it read from there before.
//!
//! - Directories are told apart by (device, inode): a symlink loop (`a -> .`) or a second link
//!   to a directory already read is reported and not followed again.
//! - Every path is checked with `stat` before it is opened, and only regular files are opened,
//!   without blocking (`O_NONBLOCK`): a FIFO or `/dev/zero` behind a `*.yaml` name is a
//!   problem, never a hang.
//! - Files over [`Limits::file_bytes`] and trees over [`Limits::files`] manifest files are
//!   refused.
//! - A file whose size or modification time changes while it is read was caught mid-write.
//! - A file whose text is the same as at the last read of the same path ([`Parsed`]) is not
//!   parsed and checked again: checking is what a scan of thousands of objects spends its time
//!   on, and most scans (the resync, an edit of one file) find most files unchanged.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use super::{Outcome, Problem, read_str};

/// Bounds on what one manifest path may make the operator read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest manifest file read.
    pub file_bytes: u64,
    /// The most manifest files read below one path.
    pub files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes: 4 * 1024 * 1024,
            files: 10_000,
        }
    }
}

/// A place below a manifest path that could not be read (completely): a file, a directory, or
/// the manifest path itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    /// The path as the files below it are named (`manifests/team`), so that `path` covers a
    /// file when the file is `path` or starts with `path/`.
    pub path: String,
    pub problem: Problem,
}

/// What reading one manifest path found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tree {
    /// One outcome per document of every file read, files in path order.
    pub outcomes: Vec<Outcome>,
    pub unreadable: Vec<Unreadable>,
}

impl Tree {
    fn refuse(&mut self, path: &Path, reason: String) {
        let path = path.display().to_string();
        self.unreadable.push(Unreadable {
            problem: Problem {
                file: path.clone(),
                line: 0,
                column: 0,
                field: String::new(),
                reason,
            },
            path,
        });
    }
}

/// What the documents of each file read last time came to, by the file's path and a digest of
/// its text. Checking depends on nothing but the file's name and text, so the same text gives
/// the same outcomes.
#[derive(Debug, Default)]
pub struct Parsed {
    files: HashMap<String, ([u8; 32], Vec<Outcome>)>,
}

impl Parsed {
    /// The outcomes of each `(file, text)`, in order: from the last read where the text is the
    /// same, else parsed and checked, on every core (files are independent, and checking is
    /// CPU-bound: a cold start of 10,000 objects spends most of its scan here). Kept into
    /// `next`, so that files no longer read are forgotten.
    fn outcomes(&mut self, next: &mut Parsed, files: Vec<(String, String)>) -> Vec<Vec<Outcome>> {
        use sha2::Digest as _;
        let mut done: Vec<Option<Vec<Outcome>>> = Vec::with_capacity(files.len());
        let mut digests = Vec::with_capacity(files.len());
        let mut to_check = Vec::new();
        for (i, (file, text)) in files.iter().enumerate() {
            let digest: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
            match self.files.remove(file) {
                Some((known, outcomes)) if known == digest => done.push(Some(outcomes)),
                _ => {
                    done.push(None);
                    to_check.push(i);
                }
            }
            digests.push(digest);
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(to_check.len().div_ceil(8).max(1));
        let checked: Vec<(usize, Vec<Outcome>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let (files, to_check) = (&files, &to_check);
                    scope.spawn(move || {
                        to_check
                            .iter()
                            .skip(t)
                            .step_by(threads)
                            .map(|&i| (i, read_str(&files[i].0, &files[i].1)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                // A panic checking a file must not read as a file with no objects: it stops
                // the whole read, which keeps everything read before.
                .flat_map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for (i, outcomes) in checked {
            done[i] = Some(outcomes);
        }
        files
            .into_iter()
            .zip(digests)
            .zip(done)
            .map(|(((file, _), digest), outcomes)| {
                let outcomes = outcomes.unwrap_or_default();
                next.files.insert(file, (digest, outcomes.clone()));
                outcomes
            })
            .collect()
    }
}

/// Reads a manifest file, or every `*.yaml` / `*.yml` file below a directory (in path order,
/// hidden entries skipped, symlinks followed once).
pub fn read_tree(root: &Path, limits: Limits) -> Tree {
    read_tree_again(root, limits, &mut Parsed::default())
}

/// [`read_tree`], taking the outcomes of files unchanged since the last read from `parsed`,
/// which then holds this read's.
pub fn read_tree_again(root: &Path, limits: Limits, parsed: &mut Parsed) -> Tree {
    let mut next = Parsed::default();
    let tree = read_root(root, limits, parsed, &mut next);
    *parsed = next;
    tree
}

fn read_root(root: &Path, limits: Limits, last: &mut Parsed, next: &mut Parsed) -> Tree {
    let mut tree = Tree::default();
    let metadata = match std::fs::metadata(root) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tree.refuse(root, "the manifest path does not exist".to_owned());
            return tree;
        }
        Err(error) => {
            tree.refuse(root, format!("cannot be read: {error}"));
            return tree;
        }
    };
    if !metadata.is_dir() {
        read_files(
            vec![(root.to_owned(), metadata)],
            limits,
            &mut tree,
            last,
            next,
        );
        return tree;
    }
    let files = match walk(root, &metadata, limits, &mut tree) {
        Ok(files) => files,
        Err(reason) => {
            // Reading part of a tree would look like the rest was deleted: read none of it.
            tree.refuse(root, reason);
            return tree;
        }
    };
    read_files(files, limits, &mut tree, last, next);
    tree.unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    tree
}

/// The manifest files below `root`, with their metadata; directories that cannot be read, and
/// entries that are neither directories nor regular files, go into `tree` as problems. Fails
/// when there are more than `limits.files`.
fn walk(
    root: &Path,
    metadata: &Metadata,
    limits: Limits,
    tree: &mut Tree,
) -> Result<Vec<(PathBuf, Metadata)>, String> {
    let mut seen: HashMap<(u64, u64), PathBuf> = HashMap::new();
    seen.insert((metadata.dev(), metadata.ino()), root.to_owned());
    let mut files = Vec::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir)
            .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
        {
            Ok(entries) => entries,
            Err(error) => {
                tree.refuse(&dir, format!("the directory cannot be read: {error}"));
                continue;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .iter()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(std::fs::DirEntry::path)
            .collect();
        paths.sort();
        let mut subdirectories = Vec::new();
        for path in paths {
            // `stat`, not `open`: it follows symlinks without blocking on what they point at.
            let metadata = match std::fs::metadata(&path) {
                Ok(metadata) => metadata,
                Err(error) => {
                    // A dangling link may have been a directory of manifests (an unmounted
                    // volume): what was read through it is kept.
                    tree.refuse(&path, format!("cannot be read: {error}"));
                    continue;
                }
            };
            if metadata.is_dir() {
                match seen.get(&(metadata.dev(), metadata.ino())) {
                    Some(first) => tree.refuse(
                        &path,
                        format!(
                            "is the directory {} again (a symlink loop or a second link to it); read once",
                            first.display()
                        ),
                    ),
                    None => {
                        seen.insert((metadata.dev(), metadata.ino()), path.clone());
                        subdirectories.push(path);
                    }
                }
            } else if is_manifest_name(&path) {
                if files.len() == limits.files {
                    return Err(format!(
                        "holds more than {} manifest files; none is read until there are fewer",
                        limits.files
                    ));
                }
                files.push((path, metadata));
            }
        }
        // Depth first, in name order.
        pending.extend(subdirectories.into_iter().rev());
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

fn is_manifest_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Reads the files whose `stat` gave their metadata into outcomes, or a problem each.
fn read_files(
    files: Vec<(PathBuf, Metadata)>,
    limits: Limits,
    tree: &mut Tree,
    last: &mut Parsed,
    next: &mut Parsed,
) {
    let mut texts = Vec::with_capacity(files.len());
    for (path, metadata) in files {
        match read_regular(&path, &metadata, limits) {
            Ok(text) => texts.push((path.display().to_string(), text)),
            Err(reason) => tree.refuse(&path, reason),
        }
    }
    for outcomes in last.outcomes(next, texts) {
        tree.outcomes.extend(outcomes);
    }
}

fn read_regular(path: &Path, metadata: &Metadata, limits: Limits) -> Result<String, String> {
    check_regular(metadata, limits)?;
    // Non-blocking, in case the file was swapped for a FIFO since its `stat`; the opened file is
    // checked again.
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot be read: {e}"))?;
    let before = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    check_regular(&before, limits)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(limits.file_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > limits.file_bytes {
        return Err(too_large(limits));
    }
    let after = file
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if after.len() != bytes.len() as u64 || after.modified().ok() != before.modified().ok() {
        return Err(
            "changed while it was read (still being written?); it is read again on its next change"
                .to_owned(),
        );
    }
    String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 text: {e}"))
}

fn check_regular(metadata: &Metadata, limits: Limits) -> Result<(), String> {
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(format!("is {what}, not a regular file: not read"));
    }
    if metadata.len() > limits.file_bytes {
        return Err(too_large(limits));
    }
    Ok(())
}

fn too_large(limits: Limits) -> String {
    format!(
        "is larger than the limit of {} bytes for a manifest: not read",
        limits.file_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL: &str = "apiVersion: infrapilot.io/v1alpha1\nkind: AlertChannel\nmetadata:\n  name: NAME\nspec:\n  webhook:\n    url: http://127.0.0.1:9/hook\n";

    fn channel(name: &str) -> String {
        CHANNEL.replace("NAME", name)
    }

    fn names(tree: &Tree) -> Vec<String> {
        tree.outcomes
            .iter()
            .map(|o| match o {
                Outcome::Valid(m) => format!("{} {}", m.file, m.name),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn unreadable(tree: &Tree, root: &Path) -> Vec<String> {
        let root = format!("{}/", root.display());
        tree.unreadable
            .iter()
            .map(|u| {
                assert_eq!(u.path, u.problem.file);
                format!("{}: {}", u.path.replace(&root, ""), u.problem.reason)
            })
            .collect()
    }

    #[test]
    fn a_tree_is_read_in_path_order_without_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/c")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("b/c/x.yml"), channel("x")).unwrap();
        std::fs::write(root.join("b/a.yaml"), channel("ba")).unwrap();
        std::fs::write(root.join("a.yaml"), channel("a")).unwrap();
        std::fs::write(root.join(".a.yaml.swp"), "garbage").unwrap();
        std::fs::write(root.join(".git/x.yaml"), "garbage").unwrap();
        std::fs::write(root.join("notes.txt"), "garbage").unwrap();
        let tree = read_tree(root, Limits::default());
        let r = root.display();
        assert_eq!(
            names(&tree),
            [
                format!("{r}/a.yaml a"),
                format!("{r}/b/a.yaml ba"),
                format!("{r}/b/c/x.yml x")
            ]
        );
        assert!(tree.unreadable.is_empty(), "{tree:?}");
    }

    #[test]
    fn a_file_read_again_is_parsed_again_only_when_its_text_changed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let r = root.display();
        std::fs::write(root.join("a.yaml"), channel("a")).unwrap();
        std::fs::write(root.join("b.yaml"), channel("b")).unwrap();
        std::fs::write(root.join("c.yaml"), channel("c")).unwrap();
        let mut parsed = Parsed::default();
        let first = read_tree_again(root, Limits::default(), &mut parsed);
        assert_eq!(first, read_tree(root, Limits::default()));

        // Mark what the first read made of a.yaml: the mark comes back only if it is reused.
        let a = format!("{r}/a.yaml");
        let (_, outcomes) = parsed.files.get_mut(&a).unwrap();
        let Outcome::Valid(manifest) = &mut outcomes[0] else {
            panic!("{outcomes:?}")
        };
        manifest.name = "a-from-the-last-read".to_owned();
        std::fs::write(root.join("b.yaml"), channel("b2")).unwrap();
        std::fs::remove_file(root.join("c.yaml")).unwrap();

        let second = read_tree_again(root, Limits::default(), &mut parsed);
        assert_eq!(
            names(&second),
            [
                format!("{r}/a.yaml a-from-the-last-read"),
                format!("{r}/b.yaml b2")
            ]
        );
        let mut remembered: Vec<&String> = parsed.files.keys().collect();
        remembered.sort();
        assert_eq!(remembered, [&a, &format!("{r}/b.yaml")]);
    }

    #[test]
    fn symlink_loops_are_reported_and_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("ops.yaml"), channel("ops")).unwrap();
        std::os::unix::fs::symlink(".", root.join("a")).unwrap();
        std::os::unix::fs::symlink(".", root.join("b")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("..", root.join("sub/up")).unwrap();
        let tree = read_tree(root, Limits::default());
        assert_eq!(names(&tree), [format!("{}/ops.yaml ops", root.display())]);
        let r = root.display();
        assert_eq!(
            unreadable(&tree, root),
            [
                format!(
                    "a: is the directory {r} again (a symlink loop or a second link to it); read once"
                ),
                format!(
                    "b: is the directory {r} again (a symlink loop or a second link to it); read once"
                ),
                format!(
                    "sub/up: is the directory {r} again (a symlink loop or a second link to it); read once"
                ),
            ]
        );
    }

    #[test]
    fn fifos_devices_and_dangling_links_are_problems_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("ops.yaml"), channel("ops")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(root.join("fifo.yaml"))
            .status()
            .unwrap();
        assert!(made.success());
        std::os::unix::fs::symlink("/dev/zero", root.join("zero.yaml")).unwrap();
        std::os::unix::fs::symlink("/nowhere", root.join("gone")).unwrap();
        // Opening the FIFO would block this test forever: finishing is the test.
        let tree = read_tree(root, Limits::default());
        assert_eq!(names(&tree), [format!("{}/ops.yaml ops", root.display())]);
        assert_eq!(
            unreadable(&tree, root),
            [
                "fifo.yaml: is a FIFO, not a regular file: not read",
                "gone: cannot be read: No such file or directory (os error 2)",
                "zero.yaml: is a character device, not a regular file: not read",
            ]
        );
        // A FIFO given as the manifest path itself.
        let tree = read_tree(&root.join("fifo.yaml"), Limits::default());
        assert_eq!(tree.outcomes, []);
        assert_eq!(tree.unreadable.len(), 1);
    }

    #[test]
    fn large_files_and_large_trees_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("a.yaml"), channel("a")).unwrap();
        std::fs::write(root.join("b.yaml"), channel("b")).unwrap();
        let limits = Limits {
            file_bytes: 200,
            files: 2,
        };
        assert_eq!(read_tree(root, limits).outcomes.len(), 2);

        std::fs::write(root.join("big.yaml"), "#".repeat(201)).unwrap();
        let tree = read_tree(root, limits);
        assert_eq!(tree.outcomes, []);
        assert_eq!(
            unreadable(&tree, root),
            [format!(
                "{}: holds more than 2 manifest files; none is read until there are fewer",
                root.display()
            )]
        );

        let tree = read_tree(root, Limits { files: 3, ..limits });
        assert_eq!(tree.outcomes.len(), 2);
        assert_eq!(
            unreadable(&tree, root),
            ["big.yaml: is larger than the limit of 200 bytes for a manifest: not read"]
        );
    }

    #[test]
    fn a_missing_path_is_a_problem_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("manifests");
        let tree = read_tree(&missing, Limits::default());
        assert_eq!(tree.outcomes, []);
        assert_eq!(
            tree.unreadable[0].problem.to_string(),
            format!("{}: the manifest path does not exist", missing.display())
        );
    }
}
