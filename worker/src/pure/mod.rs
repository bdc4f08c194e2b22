//! The pure core: desired objects, roles, rolling steps, statuses and verdicts as functions
//! of plain values. Nothing here does I/O or depends on the layers below it.
pub mod builders;
pub(crate) mod delete_protection;
pub(crate) mod lifecycle;
pub(crate) mod maintenance;
pub(crate) mod manifest;
pub(crate) mod patroni_config;
pub(crate) mod pooler;
pub(crate) mod roles;
pub(crate) mod rolling;
pub(crate) mod standing;
pub(crate) mod status;
pub(crate) mod warnings;
