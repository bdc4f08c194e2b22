//! One task per owned cluster (`task`: what arrives, one pass at a time) and the steps of a
//! pass: objects (`reconcile`), pods (`rollout`), Patroni's configuration, roles and
//! databases, deletion and the finalizer. `context` is what every task shares; `view` is
//! what inspection shows of each.
pub mod context;
pub(crate) mod deletion;
pub(crate) mod finalizer;
pub(crate) mod patroni_sync;
pub(crate) mod reconcile;
pub(crate) mod role_sync;
pub(crate) mod rollout;
pub(crate) mod task;
pub mod view;
