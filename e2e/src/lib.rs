//! The end-to-end harness: a fresh local environment (control plane + local kubelets) in its
//! own state directory and ports, driven the way a user drives a cluster, with every
//! component's log collected in `<state>/logs`.
pub mod env;
pub mod pgop;
pub mod teams_api;
pub mod wait;

pub use env::{Environment, EnvironmentOptions};
