//! Alert rules' engine, apart from any runtime: what each condition sees ([`conditions`] from
//! other objects' status, [`crashes`] from Docker's events), when alerts fire and resolve and
//! whom to tell ([`timing`], Alertmanager's semantics), and how notifications look to
//! Alertmanager's receivers ([`alertmanager`]). [`traffic`] counts the edge's access-log lines
//! for errorRate and errorSpike; following the edge's output into it lands with those rules.

pub mod alertmanager;
pub mod conditions;
pub mod crashes;
pub mod timing;
pub mod traffic;
