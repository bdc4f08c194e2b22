//! Rendezvous (highest random weight) hashing: a cluster belongs to the live worker with the
//! highest score for the pair, so a worker joining or leaving moves only the clusters it
//! wins or held. The hash is fixed (FNV-1a + splitmix64), so every scheduler instance and
//! restart computes the same owners.
fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub fn score(worker: &str, cluster: &str) -> u64 {
    splitmix64(fnv1a(worker.bytes().chain([0u8]).chain(cluster.bytes())))
}

/// The owner of `cluster` among `workers` (ties broken by worker id), or None without workers.
pub fn owner<'a>(cluster: &str, workers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    workers.into_iter().max_by(|a, b| {
        score(a, cluster)
            .cmp(&score(b, cluster))
            .then_with(|| b.cmp(a))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn clusters(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("ns-{}/cluster-{i}", i % 7))
            .collect()
    }

    fn assignment<'a>(keys: &'a [String], workers: &[&'a str]) -> BTreeMap<&'a str, &'a str> {
        keys.iter()
            .map(|k| (k.as_str(), owner(k, workers.iter().copied()).unwrap()))
            .collect()
    }

    #[test]
    fn no_workers_no_owner_and_one_worker_owns_all() {
        assert_eq!(owner("a/b", []), None);
        assert_eq!(owner("a/b", ["w1"]), Some("w1"));
    }

    #[test]
    fn balance_across_workers() {
        let keys = clusters(6000);
        for workers in [
            vec!["w1", "w2"],
            vec!["w1", "w2", "w3"],
            vec!["w-a", "w-b", "w-c", "w-d"],
            vec!["w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8"],
        ] {
            let a = assignment(&keys, &workers);
            let fair = keys.len() / workers.len();
            for w in &workers {
                let n = a.values().filter(|o| *o == w).count();
                assert!(
                    n > fair * 85 / 100 && n < fair * 115 / 100,
                    "{w} owns {n} of {} with {} workers",
                    keys.len(),
                    workers.len()
                );
            }
        }
    }

    #[test]
    fn only_the_moved_share_changes() {
        let keys = clusters(3000);
        let cases: &[(&[&str], &[&str])] = &[
            (&["w1", "w2"], &["w1", "w2", "w3"]),
            (&["w1", "w2", "w3"], &["w1", "w3"]),
            (&["w1", "w2", "w3", "w4"], &["w1", "w2", "w3", "w4", "w5"]),
        ];
        for (before, after) in cases {
            let a = assignment(&keys, before);
            let b = assignment(&keys, after);
            for k in &keys {
                let (old, new) = (a[k.as_str()], b[k.as_str()]);
                if old != new {
                    // A move goes to the joining worker or away from the leaving one.
                    let joined = !before.contains(&new);
                    let left = !after.contains(&old);
                    assert!(
                        joined || left,
                        "{k} moved {old} -> {new} between {before:?} and {after:?}"
                    );
                }
            }
            let moved = keys
                .iter()
                .filter(|k| a[k.as_str()] != b[k.as_str()])
                .count();
            let expected = keys.len() / before.len().max(after.len());
            assert!(
                moved < expected * 125 / 100,
                "{moved} moved, about {expected} expected"
            );
        }
    }

    #[test]
    fn owner_is_independent_of_worker_order() {
        for k in clusters(200) {
            assert_eq!(owner(&k, ["w1", "w2", "w3"]), owner(&k, ["w3", "w1", "w2"]));
        }
    }
}
