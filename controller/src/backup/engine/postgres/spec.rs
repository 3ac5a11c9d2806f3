//! The container of a throwaway server: the official image's contract (`POSTGRES_*`
//! variables, PGDATA, the entry point), no network, and settings that trade durability for
//! speed. Pure: [`container`] only describes it.

use super::{DATABASE, SUPERUSER};
use crate::backup::engine::ServerSpec;
use crate::docker::{ImageFacts, JobContainer};

/// Where a warm image keeps its initialised data directory: outside the official images'
/// `VOLUME` (`/var/lib/postgresql/data`, or `/var/lib/postgresql` from PostgreSQL 18), so that
/// a commit keeps it. The entry point, as root, creates and chowns PGDATA.
pub(super) const TEMPLATE: &str = "/opt/infrapilot-template";
/// The official images' PGDATA, for an image that does not say.
const DEFAULT_PGDATA: &str = "/var/lib/postgresql/data";
/// The entry point of a server started from a warm image: copies the template into PGDATA
/// (a tar pipe: twice as fast as `cp -a` on its 1,300 files), then runs the image's own entry
/// point (the arguments). Fixed text; nothing of a user's.
const WARM_START: &str = "mkdir -p \"$PGDATA\" && tar -C /opt/infrapilot-template -cf - . | tar -C \"$PGDATA\" -xf - && exec \"$@\"";
/// `/dev/shm` of the container: Docker's 64 MiB default is too small for parallel index
/// builds and hash joins of PostgreSQL's dynamic shared memory. A tmpfs: only what is used
/// is allocated.
const SHM_BYTES: i64 = 512 << 20;

/// The server settings of a throwaway server: its data is thrown away, so durability is
/// traded for speed, and it listens on its unix socket only. Public for the benchmark, whose
/// baseline runs with the same settings.
pub const SERVER_SETTINGS: &[&str] = &[
    "fsync=off",
    "full_page_writes=off",
    "synchronous_commit=off",
    "wal_level=minimal",
    "max_wal_senders=0",
    "maintenance_work_mem=512MB",
    "max_wal_size=8GB",
    "checkpoint_timeout=1h",
    "autovacuum=off",
    "listen_addresses=",
    // The restore is one transaction (see `restore`), which locks every table and index it
    // creates: room for about 100,000 locks. Few connections keep that table small.
    "max_connections=20",
    "max_locks_per_transaction=4096",
];

/// What the engine needs to know of an image.
#[derive(Debug)]
pub(super) struct Image {
    pub id: String,
    pub entrypoint: Vec<String>,
    pub pgdata: String,
}

impl From<ImageFacts> for Image {
    fn from(facts: ImageFacts) -> Self {
        let pgdata = facts
            .env
            .iter()
            .find_map(|e| e.strip_prefix("PGDATA=").map(str::to_owned))
            .unwrap_or_else(|| DEFAULT_PGDATA.to_owned());
        Self {
            id: facts.id,
            entrypoint: facts.entrypoint,
            pgdata,
        }
    }
}

/// Where a container's data directory comes from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Layout<'a> {
    /// Initialised by the image's entry point, in the image's PGDATA.
    Scratch,
    /// Initialised into [`TEMPLATE`], to be committed as a warm image.
    Template,
    /// Copied from a warm image's template into the source image's PGDATA and entry point.
    Warm(&'a Image),
}

/// The container's definition: the official image's contract, no network, fast settings.
pub(super) fn container(spec: &ServerSpec, image: &str, layout: Layout<'_>) -> JobContainer {
    let mut cmd = vec!["postgres".to_owned()];
    for setting in SERVER_SETTINGS {
        cmd.push("-c".to_owned());
        cmd.push((*setting).to_owned());
    }
    let mut env = vec![
        "POSTGRES_HOST_AUTH_METHOD=trust".to_owned(),
        format!("POSTGRES_DB={DATABASE}"),
        format!("POSTGRES_USER={SUPERUSER}"),
        // The directory is thrown away (or committed after a clean stop).
        "POSTGRES_INITDB_ARGS=--no-sync".to_owned(),
    ];
    let entrypoint = match layout {
        Layout::Scratch => None,
        Layout::Template => {
            env.push(format!("PGDATA={TEMPLATE}"));
            None
        }
        Layout::Warm(source) => {
            // The warm image carries the template's PGDATA in its environment: set the
            // source image's back.
            env.push(format!("PGDATA={}", source.pgdata));
            let mut entrypoint = vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                WARM_START.to_owned(),
                "infrapilot-warm-start".to_owned(),
            ];
            entrypoint.extend(source.entrypoint.iter().cloned());
            Some(entrypoint)
        }
    };
    JobContainer {
        name: spec.name.clone(),
        image: image.to_owned(),
        labels: spec.labels.clone(),
        env,
        entrypoint,
        cmd,
        isolated: true,
        shm_bytes: Some(SHM_BYTES),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_container_has_no_network_and_the_fast_settings() {
        let spec = ServerSpec {
            name: "v".to_owned(),
            image: "postgres:15".to_owned(),
            labels: BTreeMap::from([("a".to_owned(), "b".to_owned())]),
        };
        let source = Image::from(ImageFacts {
            id: "sha256:0123".to_owned(),
            entrypoint: vec!["docker-entrypoint.sh".to_owned()],
            env: vec!["PATH=/usr/bin".to_owned()],
        });
        assert_eq!(source.pgdata, "/var/lib/postgresql/data");
        let body = container(&spec, "postgres:15", Layout::Scratch);
        assert_eq!(body.entrypoint, None);
        assert!(!body.env.iter().any(|e| e.starts_with("PGDATA=")));
        let template = container(&spec, "postgres:15", Layout::Template);
        assert!(template.env.contains(&format!("PGDATA={TEMPLATE}")));
        // Outside the image's VOLUME, or the warm image would lose it.
        assert!(!TEMPLATE.starts_with("/var/lib/postgresql"));
        let body = container(
            &spec,
            "infrapilot-restore-warm:0123-v1",
            Layout::Warm(&source),
        );
        // The template is copied into the source image's PGDATA, then its entry point runs.
        let entrypoint = body.entrypoint.clone().expect("an entry point");
        assert_eq!(entrypoint[..2], ["/bin/sh".to_owned(), "-c".to_owned()]);
        assert!(entrypoint[2].contains(&format!("tar -C {TEMPLATE} -cf - .")));
        assert_eq!(
            entrypoint.last().map(String::as_str),
            Some("docker-entrypoint.sh")
        );
        assert_eq!(body.image, "infrapilot-restore-warm:0123-v1");
        assert_eq!(body.name, "v");
        assert_eq!(body.labels, spec.labels);
        assert!(body.isolated);
        assert_eq!(body.shm_bytes, Some(512 << 20));
        let env = &body.env;
        assert!(env.contains(&"POSTGRES_HOST_AUTH_METHOD=trust".to_owned()));
        assert!(env.contains(&"POSTGRES_DB=validation".to_owned()));
        assert!(!env.iter().any(|e| e.starts_with("POSTGRES_PASSWORD")));
        assert!(env.contains(&"PGDATA=/var/lib/postgresql/data".to_owned()));
        let cmd = body.cmd.join(" ");
        for setting in ["fsync=off", "wal_level=minimal", "listen_addresses="] {
            assert!(cmd.contains(&format!("-c {setting}")), "{cmd}");
        }
    }

    #[test]
    fn an_image_that_names_its_pgdata_keeps_it() {
        let image = Image::from(ImageFacts {
            id: "sha256:1".to_owned(),
            entrypoint: Vec::new(),
            env: vec!["PGDATA=/var/lib/postgresql/18/docker".to_owned()],
        });
        assert_eq!(image.pgdata, "/var/lib/postgresql/18/docker");
    }
}
