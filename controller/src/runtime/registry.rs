//! The one list of controllers. Both runtimes build their controllers from it, and the
//! operator's ClusterRole is derived from it ([`super::rbac`]). Adding a kind is its
//! reconciler module plus one line here (see `docs/2026-11-26-adding-a-kind.md`).

use super::services::Services;
use crate::api::Kind;
use crate::kubernetes::controller::ScopedApi;
use crate::reconcile::Reconciler;
use crate::reconcile::alert_channel::AlertChannels;
use crate::reconcile::alert_rule::AlertRules;
use crate::reconcile::backup::{BackupPolicies, BackupRuns};
use crate::reconcile::proxy::Proxies;

/// How a reconciler is built from the services.
pub type Build<R> = fn(&Services) -> R;

/// What a runtime does with each registered reconciler.
pub trait Register {
    fn add<R: Reconciler>(&mut self, build: Build<R>)
    where
        R::Object: ScopedApi;
}

/// Every kind that has a reconciler. The kind not listed (Tenant) is validated, stored and
/// shown, and left alone until its reconciler lands.
pub fn register(into: &mut impl Register) {
    into.add(|_| AlertChannels);
    into.add(|s| {
        AlertRules::new(
            s.objects.clone(),
            s.docker.clone(),
            s.metrics.clone(),
            s.edge_name.clone(),
        )
    });
    into.add(|s| {
        Proxies::new(
            s.objects.clone(),
            s.docker.clone(),
            s.edge.clone(),
            s.issuer.clone(),
        )
    });
    into.add(|s| BackupPolicies::new(s.objects.clone(), s.reports.clone()));
    into.add(|s| {
        BackupRuns::new(
            s.objects.clone(),
            s.restore.clone(),
            s.reports.clone(),
            s.max_restores,
        )
    });
}

/// The kinds that have a reconciler, in registration order.
pub fn kinds() -> Vec<Kind> {
    struct Kinds(Vec<Kind>);
    impl Register for Kinds {
        fn add<R: Reconciler>(&mut self, _build: Build<R>)
        where
            R::Object: ScopedApi,
        {
            self.0
                .extend(Kind::from_name(&<R::Object as kube::Resource>::kind(&())));
        }
    }
    let mut kinds = Kinds(Vec::new());
    register(&mut kinds);
    kinds.0
}
