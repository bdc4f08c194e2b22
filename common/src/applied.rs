//! What pgop applied to an object it owns, and whether the live object still holds it.
//! Workers write the annotations; the watcher judges every change it sees of a child object
//! with [`judge`], so a worker learns of drift (a hand-scaled StatefulSet, a removed label)
//! from the watch, without reading the object.
//!
//! Why the whole applied object travels in an annotation (as kubectl's
//! `last-applied-configuration` does): a live object differs from what was applied by the
//! fields Kubernetes fills in, so "still as applied" can only be told with both in hand.
//! Keeping what was applied in the object itself lets the watcher judge from the event
//! alone: no process keeps whole child objects in memory, and a worker that takes over a
//! cluster (or restarts) knows at once which objects are as pgop left them.
use serde_json::Value;

/// A hash of the desired object as pgop last applied it: a changed desired object (even one
/// that only lost a field) is applied again.
pub const APPLIED_HASH: &str = "pgop/applied-hash";

/// The object as pgop last applied it (JSON, without this annotation).
pub const LAST_APPLIED: &str = "pgop/last-applied";

/// How a live object stands against what pgop last applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// Nothing to compare with: the object carries no [`LAST_APPLIED`] (pgop did not write
    /// it, or only created it).
    Unknown,
    /// Every field pgop applied has the applied value.
    InSync,
    /// Somebody changed or removed a field pgop applied.
    Drifted,
}

/// Judges `live` (the object as the API server sent it) against its [`LAST_APPLIED`].
pub fn judge(live: &Value) -> Drift {
    let Some(applied) = live["metadata"]["annotations"][LAST_APPLIED].as_str() else {
        return Drift::Unknown;
    };
    let Ok(mut applied) = serde_json::from_str::<Value>(applied) else {
        // Edited by hand into something else: the worker verifies and applies again.
        return Drift::Drifted;
    };
    // The version the object is served under may differ from the one pgop wrote it with.
    if let Value::Object(map) = &mut applied {
        map.remove("apiVersion");
        map.remove("kind");
    }
    match is_subset(&applied, live) {
        true => Drift::InSync,
        false => Drift::Drifted,
    }
}

/// FNV-1a of the object's JSON: stable across processes and versions of pgop.
pub fn content_hash(json: &str) -> String {
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// True when every field set in `desired` has the same value in `live`. Lists must match
/// element for element: the server keeps their order. Fields the server fills in (defaults,
/// status, metadata) are ignored because `desired` does not set them; empty strings, lists
/// and maps, which the server drops, match a missing field; quantities match by value
/// (the server writes `1000m` as `1`).
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        (Value::String(d), Value::String(l)) => d == l || same_quantity(d, l),
        (d, l) => d == l || (is_empty(d) && l.is_null()),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    use crate::quantity::parse;
    matches!((parse(a), parse(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_comparison() {
        let table = [
            (json!({"a": 1}), json!({"a": 1, "b": 2}), true),
            (json!({"a": 1}), json!({"a": 2}), false),
            (json!({"a": 1}), json!({}), false),
            (json!({"a": null}), json!({}), true),
            (
                json!({"m": {"x": "1"}}),
                json!({"m": {"x": "1", "y": "2"}}),
                true,
            ),
            (
                json!({"l": [{"n": 1}]}),
                json!({"l": [{"n": 1, "d": true}]}),
                true,
            ),
            (
                json!({"l": [{"n": 1}]}),
                json!({"l": [{"n": 1}, {"n": 2}]}),
                false,
            ),
            (json!({"l": [1, 2]}), json!({"l": [2, 1]}), false),
            (json!({"s": "5432"}), json!({"s": 5432}), false),
            // What the server drops or rewrites still matches.
            (
                json!({"env": [{"name": "A", "value": ""}]}),
                json!({"env": [{"name": "A"}]}),
                true,
            ),
            (json!({"a": [], "m": {}}), json!({}), true),
            (
                json!({"cpu": "1000m", "memory": "2048Mi"}),
                json!({"cpu": "1", "memory": "2Gi"}),
                true,
            ),
            (json!({"cpu": "500m"}), json!({"cpu": "1"}), false),
            (
                json!({"env": [{"name": "A", "value": "x"}]}),
                json!({"env": [{"name": "A"}]}),
                false,
            ),
        ];
        for (desired, live, want) in table {
            assert_eq!(is_subset(&desired, &live), want, "{desired} ⊆ {live}");
        }
    }

    #[test]
    fn the_hash_follows_the_content() {
        let a = content_hash(r#"{"spec":{"replicas":2}}"#);
        assert_eq!(a, content_hash(r#"{"spec":{"replicas":2}}"#));
        assert_ne!(a, content_hash(r#"{"spec":{"replicas":3}}"#));
        assert_ne!(
            a,
            content_hash(r#"{"spec":{}}"#),
            "a removed field changes the hash"
        );
    }

    fn annotated(applied: &Value, live: Value) -> Value {
        let mut live = live;
        live["metadata"]["annotations"][LAST_APPLIED] = Value::String(applied.to_string());
        live
    }

    #[test]
    fn judged_against_the_last_applied_object() {
        let applied = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "b", "labels": {"app": "x"}}, "spec": {"replicas": 2}});
        let cases = [
            (
                "as applied, with what the server fills in and another version",
                annotated(
                    &applied,
                    json!({"apiVersion": "policy/v1beta1", "metadata": {"name": "b",
                    "labels": {"app": "x"}, "uid": "u"}, "spec": {"replicas": 2, "x": 1},
                    "status": {"ok": true}}),
                ),
                Drift::InSync,
            ),
            (
                "a field changed by hand",
                annotated(
                    &applied,
                    json!({"metadata": {"name": "b", "labels": {"app": "x"}},
                    "spec": {"replicas": 5}}),
                ),
                Drift::Drifted,
            ),
            (
                "a label removed",
                annotated(
                    &applied,
                    json!({"metadata": {"name": "b", "labels": {}}, "spec": {"replicas": 2}}),
                ),
                Drift::Drifted,
            ),
            (
                "no annotation",
                json!({"metadata": {"name": "b"}, "spec": {"replicas": 5}}),
                Drift::Unknown,
            ),
            (
                "an annotation that is not JSON",
                json!({"metadata": {"name": "b", "annotations": {LAST_APPLIED: "{"}}}),
                Drift::Drifted,
            ),
        ];
        for (name, live, want) in cases {
            assert_eq!(judge(&live), want, "{name}");
        }
    }
}
