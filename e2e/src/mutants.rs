//! Broken manifests, as a new user makes them by mistake or an attacker on purpose: seeded,
//! reproducible mutations of pgop's example manifests (wrong types, huge, empty and unicode
//! strings, negative and enormous numbers, hostile role, database and object names, keys
//! removed). Where the pods run is left alone, so every cluster that does run is simulated.
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};

/// One mutated manifest and what was done to it.
#[derive(Debug, Clone)]
pub struct Mutant {
    pub name: String,
    pub manifest: Value,
    pub mutations: Vec<String>,
}

/// Names and strings a hostile manifest uses.
const HOSTILE_STRINGS: &[&str] = &[
    "",
    "'; DROP TABLE pg_authid; --",
    "robert\"); DROP ROLE postgres; --",
    "🐘💥 ünïcödé \u{202e}txt.exe",
    "\u{7}\u{1b}[31mred",
    "../../etc/passwd",
    "$(reboot)",
];

/// Numbers that overflow, are negative, zero or fractional.
fn hostile_number(rng: &mut StdRng) -> Value {
    let numbers = [
        json!(-1),
        json!(0),
        json!(3.5),
        json!(2147483648i64),
        json!(-2147483649i64),
        json!(i64::MAX),
        json!(1e300),
    ];
    numbers.choose(rng).cloned().unwrap_or_default()
}

/// Spec keys a mutation never touches: they keep the pods on the simulated nodes.
const PLACEMENT: &[&str] = &["tolerations", "nodeAffinity"];

/// `count` mutants of `bases`, the same for the same `seed`, named `<prefix>-<i>`.
pub fn mutants(bases: &[Value], count: usize, seed: u64, prefix: &str) -> Vec<Mutant> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let mut manifest = bases.choose(&mut rng).cloned().unwrap_or_default();
            let name = format!("{prefix}-{i:04}");
            manifest["metadata"] = json!({ "name": name });
            let mutations = (0..rng.random_range(1..=3))
                .map(|_| mutate(&mut manifest, &mut rng))
                .collect();
            Mutant {
                name: manifest["metadata"]["name"]
                    .as_str()
                    .unwrap_or(&name)
                    .to_string(),
                manifest,
                mutations,
            }
        })
        .collect()
}

/// One step inside the manifest: a key or a list index.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn describe(path: &[Step]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(k) if text.is_empty() => text.push_str(k),
            Step::Key(k) => text.push_str(&format!(".{k}")),
            Step::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

/// Every node below `value` (not `value` itself), outside the placement keys of the spec.
fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    let children: Vec<(Step, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !(prefix.len() == 1 && PLACEMENT.contains(&k.as_str())))
            .map(|(k, v)| (Step::Key(k.clone()), v))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (Step::Index(i), v))
            .collect(),
        _ => Vec::new(),
    };
    for (step, child) in children {
        prefix.push(step);
        out.push(prefix.clone());
        paths(child, prefix, out);
        prefix.pop();
    }
}

/// Any node of the spec outside placement, as a path from the manifest's root.
fn random_path(manifest: &Value, rng: &mut StdRng) -> Option<Vec<Step>> {
    let mut all = Vec::new();
    paths(
        &manifest["spec"],
        &mut vec![Step::Key("spec".into())],
        &mut all,
    );
    all.choose(rng).cloned()
}

fn at<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(*i),
    })
}

fn hostile_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..6) {
        0 => json!(HOSTILE_STRINGS.choose(rng).copied().unwrap_or_default()),
        1 => json!("x".repeat(10_000)),
        2 => hostile_number(rng),
        3 => json!(true),
        4 => json!([{"k": [1, "a", null]}]),
        _ => json!({"k": {"nested": -1}}),
    }
}

/// Applies one mutation; says what it did.
fn mutate(manifest: &mut Value, rng: &mut StdRng) -> String {
    match rng.random_range(0..10) {
        // A hostile role or database name, or a hostile cluster name.
        0 => {
            let hostile = HOSTILE_STRINGS.choose(rng).copied().unwrap_or_default();
            let (section, value) = match rng.random_range(0..3) {
                0 => ("users", json!(["superuser", "createdb"])),
                1 => ("databases", json!(hostile)),
                _ => ("preparedDatabases", json!({"schemas": {hostile: {}}})),
            };
            if !manifest["spec"][section].is_object() {
                manifest["spec"][section] = json!({});
            }
            manifest["spec"][section][hostile] = value;
            format!("spec.{section}[{hostile:?}]")
        }
        1 => {
            let name = HOSTILE_STRINGS.choose(rng).copied().unwrap_or_default();
            manifest["metadata"]["name"] = json!(name);
            format!("metadata.name = {name:?}")
        }
        // A key removed.
        2 => {
            let Some(path) = random_path(manifest, rng) else {
                return "nothing".into();
            };
            let (last, parent) = path.split_last().expect("a path has a step");
            match (at(manifest, parent), last) {
                (Some(Value::Object(map)), Step::Key(k)) => {
                    map.remove(k);
                }
                (Some(Value::Array(items)), Step::Index(i)) if *i < items.len() => {
                    items.remove(*i);
                }
                _ => {}
            }
            format!("{} removed", describe(&path))
        }
        // A value of the wrong type or out of range.
        _ => {
            let Some(path) = random_path(manifest, rng) else {
                return "nothing".into();
            };
            let value = hostile_value(rng);
            let shown = match &value {
                Value::String(s) if s.len() > 40 => format!("a {}-character string", s.len()),
                other => other.to_string(),
            };
            if let Some(target) = at(manifest, &path) {
                *target = value;
            }
            format!("{} = {shown}", describe(&path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
            "metadata": {"name": "acid-base"},
            "spec": {
                "teamId": "acid", "numberOfInstances": 1, "volume": {"size": "1Gi"},
                "postgresql": {"version": "15", "parameters": {"work_mem": "4MB"}},
                "users": {"zalando": ["createdb"]},
                "tolerations": [{"key": "pgop.local/simulated", "operator": "Exists"}],
                "nodeAffinity": {"required": true}
            }
        })
    }

    #[test]
    fn the_same_seed_makes_the_same_mutants_and_every_one_differs_from_its_base() {
        let a = mutants(&[base()], 200, 7, "m");
        let b = mutants(&[base()], 200, 7, "m");
        assert_eq!(a.len(), 200);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.manifest, y.manifest);
            assert_eq!(x.mutations, y.mutations);
            assert!(!x.mutations.is_empty());
        }
        let changed = a
            .iter()
            .filter(|m| {
                let mut original = base();
                original["metadata"] = json!({"name": m.name});
                m.manifest != original
            })
            .count();
        // A mutation may set a value to what it was; nearly all change something.
        assert!(changed > 190, "{changed} of 200 changed");
        assert_ne!(
            mutants(&[base()], 20, 8, "m")
                .iter()
                .map(|m| &m.manifest)
                .collect::<Vec<_>>(),
            a[..20].iter().map(|m| &m.manifest).collect::<Vec<_>>()
        );
    }

    #[test]
    fn placement_is_never_mutated() {
        for m in mutants(&[base()], 500, 3, "m") {
            assert_eq!(
                m.manifest["spec"]["tolerations"],
                base()["spec"]["tolerations"]
            );
            assert_eq!(
                m.manifest["spec"]["nodeAffinity"],
                base()["spec"]["nodeAffinity"]
            );
        }
    }

    #[test]
    fn every_kind_of_mutation_occurs() {
        let all: Vec<String> = mutants(&[base()], 300, 1, "m")
            .into_iter()
            .flat_map(|m| m.mutations)
            .collect();
        for fragment in [
            "removed",
            "metadata.name",
            "spec.users[",
            "= 2147483648",
            "character string",
        ] {
            assert!(
                all.iter().any(|m| m.contains(fragment)),
                "no mutation with {fragment:?}"
            );
        }
    }
}
