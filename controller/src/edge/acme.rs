//! The requests that read or write files on the edge without changing its configuration, so
//! the actor answers them at once instead of batching them: ACME HTTP-01 challenge answers,
//! the ACME account state kept next to the certificate keys, and the certificate files a
//! Proxy is served with.

use super::actor::Owner;
use super::{ACME_STATE_DIR, EdgeError};
use crate::docker::DockerError;
use crate::proxy::site;

impl Owner {
    pub(super) async fn publish_challenge(
        &mut self,
        token: &str,
        answer: &str,
    ) -> Result<(), EdgeError> {
        if !crate::proxy::acme::valid_token(token) {
            return Err(EdgeError::Docker(DockerError::Refused(format!(
                "invalid ACME token {token:?}"
            ))));
        }
        self.ensure_running(None).await?;
        let container = self.container.clone().ok_or(EdgeError::Stopped)?;
        let file = (
            format!("{}/{token}", site::ACME_DIR),
            answer.as_bytes().to_vec(),
        );
        self.docker.put_files(&container, &[file]).await?;
        Ok(())
    }

    pub(super) async fn acme_state(
        &mut self,
        name: &str,
        write: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, EdgeError> {
        if !crate::proxy::acme::valid_token(name) {
            return Err(EdgeError::Docker(DockerError::Refused(format!(
                "invalid ACME state name {name:?}"
            ))));
        }
        self.ensure_running(None).await?;
        let container = self.container.clone().ok_or(EdgeError::Stopped)?;
        // `.key`: written readable by the nginx master (root) only.
        let path = format!("{ACME_STATE_DIR}/{name}.key");
        match write {
            Some(content) => {
                self.docker
                    .put_files(&container, &[(path, content)])
                    .await?;
                Ok(None)
            }
            None => Ok(self
                .docker
                .read_files(&container, ACME_STATE_DIR)
                .await?
                .into_iter()
                .find(|(file, _)| *file == format!("{name}.key"))
                .map(|(_, content)| content)),
        }
    }

    pub(super) async fn live_files(
        &mut self,
        id: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, EdgeError> {
        if self.container.is_none() {
            self.ensure_running(None).await?;
        }
        Ok(self
            .live
            .get(id)
            .map(|l| l.files.clone())
            .unwrap_or_default())
    }
}
