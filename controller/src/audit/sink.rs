//! The audit log as the code that has side effects sees it: a place to record them. The edge and
//! the reconcilers depend on this trait, not on the log's storage; Kubernetes mode wraps the
//! log to also publish each record as an Event.

use async_trait::async_trait;

use super::{AuditLog, NewRecord};

/// Records side effects (see [`crate::audit`]).
#[async_trait]
pub trait Audit: Send + Sync {
    async fn record(&self, record: NewRecord) -> anyhow::Result<()>;
}

#[async_trait]
impl Audit for AuditLog {
    async fn record(&self, record: NewRecord) -> anyhow::Result<()> {
        self.append(record).await.map(drop)
    }
}
