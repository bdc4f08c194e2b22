//! The worker's I/O toward others: Kubernetes writes (one field manager, only what differs),
//! Patroni's REST API, PostgreSQL connections and the teams API.
pub(crate) mod apply;
pub(crate) mod database;
#[cfg(test)]
pub(crate) mod mock_api;
pub(crate) mod patroni;
pub(crate) mod teams_api;
