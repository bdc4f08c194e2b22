//! Turns to replace pods: at most `limit` clusters of the whole fleet are in a rolling update
//! at once (a configuration change that alters every pod must not restart the fleet at
//! once). Workers ask for a cluster's turn and give it back; turns of a worker that leaves
//! go to the next in line. Pure: the actor sends the grants.
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Default)]
pub struct RollingTurns {
    limit: usize,
    /// cluster → the worker holding its turn
    held: BTreeMap<String, String>,
    /// (cluster, worker) in the order they asked
    waiting: VecDeque<(String, String)>,
}

/// Turns granted: (worker, cluster).
pub type Grants = Vec<(String, String)>;

impl RollingTurns {
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            ..Self::default()
        }
    }

    pub fn request(&mut self, worker: &str, cluster: &str) -> Grants {
        match self.held.get(cluster) {
            // Asked again (a restarted task): the turn is still its own.
            Some(holder) if holder == worker => {
                return vec![(worker.to_string(), cluster.to_string())]
            }
            // Held by the cluster's previous owner: it gives it back when it lets go.
            Some(_) => {}
            None if self.held.len() < self.limit => {
                self.held.insert(cluster.to_string(), worker.to_string());
                return vec![(worker.to_string(), cluster.to_string())];
            }
            None => {}
        }
        if !self
            .waiting
            .iter()
            .any(|(c, w)| c == cluster && w == worker)
        {
            self.waiting
                .push_back((cluster.to_string(), worker.to_string()));
        }
        Vec::new()
    }

    pub fn done(&mut self, worker: &str, cluster: &str) -> Grants {
        self.waiting.retain(|(c, w)| !(c == cluster && w == worker));
        if self
            .held
            .get(cluster)
            .is_some_and(|holder| holder == worker)
        {
            self.held.remove(cluster);
        }
        self.grant()
    }

    pub fn worker_left(&mut self, worker: &str) -> Grants {
        self.waiting.retain(|(_, w)| w != worker);
        self.held.retain(|_, holder| holder != worker);
        self.grant()
    }

    /// Clusters in a rolling update and clusters waiting for a turn.
    pub fn counts(&self) -> (usize, usize) {
        (self.held.len(), self.waiting.len())
    }

    fn grant(&mut self) -> Grants {
        let mut grants = Vec::new();
        let mut skipped = VecDeque::new();
        while self.held.len() < self.limit {
            let Some((cluster, worker)) = self.waiting.pop_front() else {
                break;
            };
            if self.held.contains_key(&cluster) {
                // Another worker still holds this cluster's turn: keep waiting.
                skipped.push_back((cluster, worker));
                continue;
            }
            self.held.insert(cluster.clone(), worker.clone());
            grants.push((worker, cluster));
        }
        skipped.extend(self.waiting.drain(..));
        self.waiting = skipped;
        grants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(pairs: &[(&str, &str)]) -> Grants {
        pairs
            .iter()
            .map(|(w, c)| (w.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn at_most_limit_clusters_roll_across_workers() {
        let mut turns = RollingTurns::new(2);
        assert_eq!(turns.request("w1", "a"), g(&[("w1", "a")]));
        assert_eq!(turns.request("w2", "b"), g(&[("w2", "b")]));
        assert_eq!(
            turns.request("w1", "c"),
            g(&[]),
            "the fleet's limit is reached"
        );
        assert_eq!(turns.request("w2", "d"), g(&[]));
        assert_eq!(turns.request("w1", "c"), g(&[]), "asking twice queues once");
        assert_eq!(turns.counts(), (2, 2));
        assert_eq!(
            turns.request("w1", "a"),
            g(&[("w1", "a")]),
            "a holder asking again"
        );
        assert_eq!(
            turns.done("w1", "a"),
            g(&[("w1", "c")]),
            "first come, first served"
        );
        assert_eq!(
            turns.worker_left("w2"),
            g(&[]),
            "w2's waiting d goes with it"
        );
        assert_eq!(turns.counts(), (1, 0));
        assert_eq!(turns.request("w3", "e"), g(&[("w3", "e")]));
    }

    #[test]
    fn a_moved_cluster_waits_for_its_previous_owner() {
        let mut turns = RollingTurns::new(2);
        turns.request("w1", "a");
        assert_eq!(turns.request("w2", "a"), g(&[]), "w1 still holds a's turn");
        assert_eq!(turns.done("w1", "a"), g(&[("w2", "a")]));
        assert_eq!(
            turns.done("w9", "a"),
            g(&[]),
            "only the holder gives a turn back"
        );
        assert_eq!(turns.counts(), (1, 0));
    }
}
