//! What a worker knows without asking Kubernetes: the objects of its clusters as the watcher
//! reported them, and what the last sync of a cluster left.
pub(crate) mod children;
pub(crate) mod objects_memo;
