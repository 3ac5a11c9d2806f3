//! The warm-image cache. Initialising a data directory (initdb, then the entry point's
//! temporary server that creates the database) takes two to three seconds, longer than every
//! other check together. It is done once per image: when an image has no *warm image* yet, its
//! server is initialised as usual and, beside it, a server of the image initialises a template
//! directory outside the image's `VOLUME` (a commit leaves volumes out), stops cleanly and is
//! committed as `infrapilot-restore-warm:<image id>-<layout>`. Later servers start from that
//! image ([`super::spec::Layout::Warm`]): the template (about 40 MB) is copied into the
//! image's own PGDATA, a volume, before the image's entry point runs, which then finds the
//! directory initialised and starts the server at once. The restore itself writes to the
//! volume, as it would without a warm image: writing to the container's overlay file system
//! instead makes it three times slower. A warm image that cannot be made only costs speed,
//! and is tried once per image and process.

use std::collections::BTreeMap;
use std::time::Duration;

use super::spec::Layout;
use super::{Postgres, engine_error};
use crate::backup::engine::{EngineError, ServerSpec, Throwaway};

/// The repository of warm images; the tag is the source image's id and [`LAYOUT`].
const REPOSITORY: &str = "infrapilot-restore-warm";
/// Changes whenever what a warm image holds changes (the environment, the database), so that
/// an operator of another version never starts from a warm image it did not make.
const LAYOUT: &str = "v1";
/// How long making a warm image may take.
const TIMEOUT: Duration = Duration::from_secs(120);
/// The label of the containers that make warm images, for the sweeps that look for leftovers.
/// A commit keeps the container's labels, and containers of the image inherit them: the warm
/// image gets it with another value, so that no sweep takes its servers for builders.
const BUILDER_LABEL: (&str, &str, &str) = ("infrapilot.io/warm-image-build", "true", "false");

/// The reference of the warm image of the image with this id.
pub(super) fn reference(id: &str) -> String {
    let (repository, tag) = repository_and_tag(id);
    format!("{repository}:{tag}")
}

fn repository_and_tag(id: &str) -> (String, String) {
    let hex = id.trim_start_matches("sha256:");
    (
        REPOSITORY.to_owned(),
        format!("{}-{LAYOUT}", &hex[..hex.len().min(16)]),
    )
}

impl Postgres {
    /// Makes the warm image of `image` in the background, once per image and process.
    pub(super) fn warm_later(&self, image: &str, id: &str) {
        let first = self
            .warming
            .lock()
            .is_ok_and(|mut begun| begun.insert(id.to_owned()));
        if !first {
            return;
        }
        let (this, image, id) = (self.clone(), image.to_owned(), id.to_owned());
        tokio::spawn(async move {
            match this.make_warm(&image, &id).await {
                Ok(reference) => tracing::info!(%image, warm = %reference, "made the warm image"),
                Err(error) => {
                    tracing::warn!(%image, "could not make a warm image; servers of it are initialised from scratch: {error}")
                }
            }
        });
    }

    /// Initialises a server of `image`, stops it cleanly and commits it as its warm image.
    async fn make_warm(&self, image: &str, id: &str) -> Result<String, EngineError> {
        let (repository, tag) = repository_and_tag(id);
        // What an earlier process left when it stopped half way.
        let leftovers = BTreeMap::from([(BUILDER_LABEL.0.to_owned(), BUILDER_LABEL.1.to_owned())]);
        if let Ok(found) = self.docker.containers_with_labels(&leftovers).await {
            for container in found {
                let _ = self.docker.remove(&container.id).await;
            }
        }
        let name = format!("infrapilot-warm-{}", uuid::Uuid::new_v4().simple());
        let spec = ServerSpec {
            name: name.clone(),
            image: image.to_owned(),
            labels: BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "infrapilot".to_owned(),
                ),
                (BUILDER_LABEL.0.to_owned(), BUILDER_LABEL.1.to_owned()),
            ]),
        };
        let made = tokio::time::timeout(TIMEOUT, async {
            let server = self
                .create_and_start(&spec, image, Layout::Template)
                .await?;
            server.ready(TIMEOUT).await?;
            // SIGTERM: a clean shutdown, so that the committed directory needs no recovery.
            self.docker
                .stop(&name)
                .await
                .map_err(|e| engine_error(&format!("stopping {name}"), e))?;
            // What is not set here is kept from the container (entry point, command, ...).
            let labels = BTreeMap::from([(BUILDER_LABEL.0.to_owned(), BUILDER_LABEL.2.to_owned())]);
            self.docker
                .commit(
                    &name,
                    &repository,
                    &tag,
                    &format!("{image} with an initialised data directory"),
                    &labels,
                )
                .await
                .map_err(|e| engine_error(&format!("committing {name}"), e))?;
            Ok::<_, EngineError>(())
        })
        .await
        .unwrap_or_else(|_| {
            Err(EngineError::Failed(format!(
                "making the warm image took longer than {TIMEOUT:?}"
            )))
        });
        let _ = self.docker.remove(&name).await;
        made.map(|()| format!("{repository}:{tag}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_image_is_named_by_its_source_image_id_and_the_layout() {
        assert_eq!(
            reference("sha256:0123456789abcdef0123456789abcdef"),
            "infrapilot-restore-warm:0123456789abcdef-v1"
        );
        assert_eq!(reference("abc"), "infrapilot-restore-warm:abc-v1");
    }
}
