//! Alert rules' engine, apart from any runtime: when alerts fire and resolve and whom to tell
//! ([`timing`], Alertmanager's semantics), and how notifications look to Alertmanager's
//! receivers ([`alertmanager`]).

pub mod alertmanager;
pub mod conditions;
pub mod timing;
