//! Types every pgop process shares. Service crates depend on this crate and on
//! `pgop-proto`, never on each other.
pub mod addresses;
pub mod admin;
pub mod applied;
pub mod config;
pub mod corpus;
pub mod crd;
pub mod discovery;
pub mod fencing;
pub mod lease;
pub mod metrics;
mod operator_configuration;
pub mod quantity;
pub mod retry;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
