//! An in-memory engine for unit tests of the ladder and the run reconciler.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::backup::Dump;

/// A dump fixture of `src/backup/testdata/`.
pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/backup/testdata")
        .join(name)
}

/// An engine that answers from its fields and records what it was asked.
#[derive(Debug)]
pub struct FakeEngine {
    pub major: u32,
    pub restore: Result<(), String>,
    pub restore_takes: Duration,
    pub tables: Vec<TableRows>,
    pub queries: BTreeMap<String, Result<QueryRows, String>>,
    pub log: Mutex<Vec<String>>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self {
            major: 15,
            restore: Ok(()),
            restore_takes: Duration::ZERO,
            tables: vec![
                TableRows {
                    schema: "public".into(),
                    name: "customers".into(),
                    rows: 3,
                },
                TableRows {
                    schema: "shop".into(),
                    name: "items".into(),
                    rows: 2,
                },
            ],
            queries: BTreeMap::new(),
            log: Mutex::default(),
        }
    }
}

impl FakeEngine {
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

struct FakeServer(Arc<FakeEngine>);

#[async_trait]
impl RestoreEngine for Arc<FakeEngine> {
    async fn start(&self, spec: &ServerSpec) -> Result<Box<dyn Throwaway>, EngineError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("start {}", spec.name));
        Ok(Box::new(FakeServer(self.clone())))
    }
    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        self.log.lock().unwrap().push(format!("remove {name}"));
        Ok(())
    }
    async fn list(&self, _: &BTreeMap<String, String>) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl Throwaway for FakeServer {
    fn name(&self) -> &str {
        "fake"
    }
    async fn version(&self) -> Result<ServerVersion, EngineError> {
        Ok(ServerVersion {
            major: self.0.major,
            text: format!("{}.3", self.0.major),
        })
    }
    async fn list_contents(&self, dump: &Dump) -> Result<TableOfContents, EngineError> {
        self.0
            .log
            .lock()
            .unwrap()
            .push(format!("list {}", dump.format));
        Ok(TableOfContents {
            entries: 20,
            table_data: 3,
        })
    }
    async fn ready(&self, _: Duration) -> Result<(), EngineError> {
        Ok(())
    }
    async fn restore(&self, dump: &Dump, roles: &[String]) -> Result<RestoreStats, EngineError> {
        self.0.log.lock().unwrap().push(format!(
            "restore {} roles {roles:?} db {:?}",
            dump.format, dump.database
        ));
        tokio::time::sleep(self.0.restore_takes).await;
        self.0.restore.clone().map_err(EngineError::Failed)?;
        Ok(RestoreStats {
            bytes_read: 4000,
            database_bytes: 8_000_000,
        })
    }
    fn database(&self) -> &str {
        "validation"
    }
    async fn tables(&self) -> Result<Vec<TableRows>, EngineError> {
        Ok(self.0.tables.clone())
    }
    async fn query(&self, sql: &str) -> Result<QueryRows, EngineError> {
        match self.0.queries.get(sql) {
            Some(answer) => answer.clone().map_err(EngineError::Failed),
            None => Err(EngineError::Failed(format!("no answer for {sql}"))),
        }
    }
    async fn remove(&self) -> Result<(), EngineError> {
        Ok(())
    }
}
