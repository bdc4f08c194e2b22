//! The worker process around its cluster tasks: the session with the scheduler, the registry
//! that starts and fences tasks, the inspection gRPC service, and the tracing layer that
//! files each pass's lines in its cluster's log ring.
pub mod cluster_log;
pub mod registry;
pub mod service;
pub mod session;
