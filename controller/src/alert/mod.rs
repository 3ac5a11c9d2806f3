//! Alert rules' engine, apart from any runtime: what each condition sees ([`conditions`] from
//! other objects' status, [`crashes`] from Docker's events), when alerts fire and resolve and
//! whom to tell ([`timing`], Alertmanager's semantics), and how notifications look to
//! Alertmanager's receivers ([`alertmanager`]).

pub mod alertmanager;
pub mod conditions;
pub mod crashes;
pub mod timing;
