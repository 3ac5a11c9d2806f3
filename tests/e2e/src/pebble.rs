//! Pebble, Let's Encrypt's ACME test server, as `tests/env/services.sh` runs it.

use anyhow::Context;

use crate::Result;
use crate::env::{required, required_path};

#[derive(Debug, Clone)]
pub struct Pebble {
    /// The ACME directory URL (HTTPS on loopback).
    pub directory: String,
    /// The management API (`/roots/0` serves the root of the certificates pebble issues).
    pub management: String,
    /// The CA of pebble's own HTTPS listener (not of the certificates it issues).
    pub listener_ca_pem: Vec<u8>,
    /// The port pebble connects to on 127.0.0.1 for HTTP-01 validation.
    pub http01_port: u16,
}

impl Pebble {
    pub fn from_env() -> Self {
        let ca = required_path("INFRAPILOT_TEST_ACME_CA", "pebble's listener CA");
        Self {
            directory: required("INFRAPILOT_TEST_ACME_DIRECTORY", "the pebble ACME server"),
            management: required("INFRAPILOT_TEST_ACME_MANAGEMENT", "pebble's management API"),
            listener_ca_pem: std::fs::read(&ca).expect("reading pebble's listener CA"),
            http01_port: required("INFRAPILOT_TEST_ACME_HTTP01_PORT", "pebble's HTTP-01 port")
                .parse()
                .expect("INFRAPILOT_TEST_ACME_HTTP01_PORT is a port"),
        }
    }

    /// An HTTPS client that trusts pebble's listener.
    pub fn client(&self) -> Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.listener_ca_pem)?)
            .build()?)
    }

    /// The ACME directory document.
    pub async fn directory(&self) -> Result<serde_json::Value> {
        let response = self
            .client()?
            .get(&self.directory)
            .send()
            .await
            .context("GET the ACME directory")?;
        Ok(response.error_for_status()?.json().await?)
    }

    /// The PEM root that signs the certificates pebble issues (new at every pebble start).
    pub async fn issuer_root_pem(&self) -> Result<String> {
        let url = format!("{}/roots/0", self.management);
        Ok(self
            .client()?
            .get(&url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}
