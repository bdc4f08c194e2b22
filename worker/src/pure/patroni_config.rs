//! Patroni's dynamic configuration, kept live: what the manifest asks for (the DCS part of
//! `SPILO_CONFIGURATION`) against what `GET /config` reports, as the one `PATCH /config`
//! that closes the gap, and in which order the members restart for parameters that need
//! it (Zalando's `checkAndSetGlobalPostgreSQLConfiguration` and `restartInstances`). Pure.
use serde_json::{Map, Value};

/// Parameters a hot standby must keep at least as high as its primary: lowering one
/// restarts the master first (replicas first otherwise).
const MASTER_FIRST_WHEN_DECREASED: [&str; 5] = [
    "max_connections",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "max_worker_processes",
    "max_wal_senders",
];

/// Keys Patroni treats as off when absent: a manifest that no longer sets them turns them
/// off.
const OFF_WHEN_ABSENT: [&str; 2] = ["synchronous_mode", "synchronous_mode_strict"];

/// A parameter the patch changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterChange {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
}

/// The change to Patroni's dynamic configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigPatch {
    /// The body of `PATCH /config`.
    pub body: Value,
    pub parameters: Vec<ParameterChange>,
    /// Keys other than parameters that change (`ttl`, `slots`, …).
    pub settings: Vec<String>,
}

impl ConfigPatch {
    /// Whether pending restarts go master first: only when every change lowers one of the
    /// parameters a standby may not have lower than its primary.
    pub fn master_restarts_first(&self) -> bool {
        !self.parameters.is_empty()
            && self.settings.is_empty()
            && self.parameters.iter().all(|p| {
                MASTER_FIRST_WHEN_DECREASED.contains(&p.name.as_str())
                    && matches!(
                        (number(p.from.as_deref()), number(Some(&p.to))),
                        (Some(from), Some(to)) if to < from
                    )
            })
    }

    /// What changes, for logs and Events: names only, never values of settings.
    pub fn summary(&self) -> String {
        let mut changed: Vec<String> = self.settings.clone();
        changed.extend(self.parameters.iter().map(|p| p.name.clone()));
        changed.join(", ")
    }
}

fn number(value: Option<&str>) -> Option<f64> {
    value?.trim().parse().ok()
}

/// A value as text: Patroni may keep `100` where the manifest says `"100"`.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The patch bringing `current` (Patroni's `GET /config`) to `desired` (see
/// [`crate::pure::builders::spilo_env::dynamic_configuration`]); None when nothing differs.
/// Parameters and slots the manifest no longer names are left alone, as Zalando does.
pub fn config_patch(desired: &Value, current: &Value) -> Option<ConfigPatch> {
    let empty = Map::new();
    let desired = desired.as_object().unwrap_or(&empty);
    let current = current.as_object().unwrap_or(&empty);
    let mut body = Map::new();
    let mut settings = Vec::new();

    for (key, want) in desired {
        if matches!(key.as_str(), "postgresql" | "slots") {
            continue;
        }
        if current.get(key).map(text) != Some(text(want)) {
            body.insert(key.clone(), want.clone());
            settings.push(key.clone());
        }
    }
    for key in OFF_WHEN_ABSENT {
        if !desired.contains_key(key) && current.get(key) == Some(&Value::Bool(true)) {
            body.insert(key.to_string(), Value::Bool(false));
            settings.push(key.to_string());
        }
    }

    let mut slots = Map::new();
    let current_slots = current.get("slots").and_then(Value::as_object);
    for (name, want) in desired
        .get("slots")
        .and_then(Value::as_object)
        .unwrap_or(&empty)
    {
        let have = current_slots.and_then(|s| s.get(name));
        let same = have.and_then(Value::as_object).is_some_and(|have| {
            want.as_object().is_some_and(|want| {
                want.iter()
                    .all(|(k, v)| have.get(k).map(text) == Some(text(v)))
            })
        });
        if !same {
            slots.insert(name.clone(), want.clone());
        }
    }
    if !slots.is_empty() {
        settings.push("slots".into());
        body.insert("slots".into(), Value::Object(slots));
    }

    let current_parameters = current
        .get("postgresql")
        .and_then(|p| p.get("parameters"))
        .and_then(Value::as_object);
    let mut parameters = Map::new();
    let mut changes = Vec::new();
    for (name, want) in desired
        .get("postgresql")
        .and_then(|p| p.get("parameters"))
        .and_then(Value::as_object)
        .unwrap_or(&empty)
    {
        let from = current_parameters.and_then(|p| p.get(name)).map(text);
        if from.as_deref() != Some(text(want).as_str()) {
            parameters.insert(name.clone(), want.clone());
            changes.push(ParameterChange {
                name: name.clone(),
                from,
                to: text(want),
            });
        }
    }
    if !parameters.is_empty() {
        body.insert(
            "postgresql".into(),
            serde_json::json!({ "parameters": parameters }),
        );
    }

    (!body.is_empty()).then_some(ConfigPatch {
        body: Value::Object(body),
        parameters: changes,
        settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn current() -> Value {
        json!({
            "ttl": 30, "loop_wait": 10, "retry_timeout": 10,
            "maximum_lag_on_failover": 33554432,
            "failsafe_mode": false,
            "postgresql": {"use_pg_rewind": true, "parameters": {
                "max_connections": 100, "wal_level": "replica", "work_mem": "4MB"
            }},
            "slots": {"cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"}}
        })
    }

    #[test]
    fn patches() {
        // (what, desired, patch body or None, master first)
        let table: Vec<(&str, Value, Option<Value>, bool)> = vec![
            (
                "in sync, numbers as text",
                json!({"ttl": 30, "failsafe_mode": false,
                       "postgresql": {"parameters": {"max_connections": "100"}},
                       "slots": {"cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"}}}),
                None,
                false,
            ),
            (
                "a parameter raised",
                json!({"postgresql": {"parameters": {"max_connections": "200", "work_mem": "4MB"}}}),
                Some(json!({"postgresql": {"parameters": {"max_connections": "200"}}})),
                false,
            ),
            (
                "a parameter lowered: master first",
                json!({"postgresql": {"parameters": {"max_connections": "50"}}}),
                Some(json!({"postgresql": {"parameters": {"max_connections": "50"}}})),
                true,
            ),
            (
                "lowered together with another parameter: replicas first",
                json!({"postgresql": {"parameters": {"max_connections": "50", "work_mem": "8MB"}}}),
                Some(
                    json!({"postgresql": {"parameters": {"max_connections": "50", "work_mem": "8MB"}}}),
                ),
                false,
            ),
            (
                "a new parameter",
                json!({"postgresql": {"parameters": {"log_min_duration_statement": "250"}}}),
                Some(json!({"postgresql": {"parameters": {"log_min_duration_statement": "250"}}})),
                false,
            ),
            (
                "timings and failsafe",
                json!({"ttl": 45, "loop_wait": 10, "failsafe_mode": true}),
                Some(json!({"ttl": 45, "failsafe_mode": true})),
                false,
            ),
            (
                "synchronous mode on",
                json!({"synchronous_mode": true}),
                Some(json!({"synchronous_mode": true})),
                false,
            ),
            (
                "a changed and a new slot",
                json!({"slots": {
                    "cdc": {"type": "logical", "database": "other", "plugin": "pgoutput"},
                    "phys": {"type": "physical"}}}),
                Some(json!({"slots": {
                    "cdc": {"type": "logical", "database": "other", "plugin": "pgoutput"},
                    "phys": {"type": "physical"}}})),
                false,
            ),
        ];
        for (what, desired, body, master_first) in table {
            let patch = config_patch(&desired, &current());
            assert_eq!(patch.as_ref().map(|p| &p.body), body.as_ref(), "{what}");
            assert_eq!(
                patch.is_some_and(|p| p.master_restarts_first()),
                master_first,
                "{what}"
            );
        }
    }

    #[test]
    fn synchronous_mode_off_when_the_manifest_drops_it() {
        let mut on = current();
        on["synchronous_mode"] = json!(true);
        let patch = config_patch(&json!({}), &on).unwrap();
        assert_eq!(patch.body, json!({"synchronous_mode": false}));
        assert_eq!(patch.summary(), "synchronous_mode");
    }

    #[test]
    fn the_manifest_side_comes_from_the_spilo_configuration() {
        let pg = crate::pure::roles::desired::tests::manifest(
            "acid-p",
            "  teamId: acid\n  numberOfInstances: 2\n  volume: {size: 1Gi}\n  postgresql:\n    version: \"15\"\n    parameters: {max_connections: \"100\", shared_buffers: 64MB}\n  patroni: {ttl: 30}\n",
        );
        let desired = crate::pure::builders::spilo_env::dynamic_configuration(
            &pg,
            &pgop_common::config::OperatorConfig::default(),
        );
        assert_eq!(
            desired,
            json!({"ttl": 30, "postgresql": {"parameters": {"max_connections": "100"}}, "failsafe_mode": false}),
            "shared_buffers is local, not dynamic"
        );
        assert_eq!(config_patch(&desired, &current()), None);
    }
}
