//! Labels, annotations and owner references the cluster's objects carry, as Zalando's
//! `labelsSet`, `roleLabelsSet`, `annotationsSet`, `AnnotationsToPropagate` and
//! `ownerReferences` make them.
//!
//! Selectors use only the stable labels (operator's `cluster_labels` + cluster name):
//! the team and inherited labels may change, and a StatefulSet's selector cannot.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use super::{cluster_name, BuildError};

/// `apiVersion` and `kind` of the `postgresql` objects, as owner references name them.
const POSTGRESQL_API_VERSION: &str = "acid.zalan.do/v1";
const POSTGRESQL_KIND: &str = "postgresql";

/// Value of the role label on the primary's pod (Patroni sets it).
pub const MASTER_ROLE: &str = "master";
/// Value of the role label on replica pods.
pub const REPLICA_ROLE: &str = "replica";
/// Label carrying the manifest's `teamId`, for finding a team's objects.
pub const TEAM_LABEL: &str = "team";

/// `cluster_labels` + `cluster_name_label: <cluster>`: what StatefulSet selectors, PVC and
/// pod lookups match on.
pub fn selector_labels(pg: &Postgresql, config: &OperatorConfig) -> BTreeMap<String, String> {
    cluster_selector(config, cluster_name(pg))
}

/// [`selector_labels`] from the cluster's name alone (a deleted cluster has no manifest).
pub fn cluster_selector(config: &OperatorConfig, cluster: &str) -> BTreeMap<String, String> {
    let mut labels = config.cluster_labels.clone();
    labels.insert(config.cluster_name_label.clone(), cluster.to_string());
    labels
}

/// Selector labels + `team` (the `teamId` as written, as Zalando does) + the manifest labels
/// named in `inherited_labels`: what every object of the cluster carries.
pub fn object_labels(pg: &Postgresql, config: &OperatorConfig) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pg, config);
    labels.insert(TEAM_LABEL.to_string(), pg.spec.team_id.clone());
    labels.extend(inherited(
        pg.metadata.labels.as_ref(),
        &config.inherited_labels,
    ));
    labels
}

/// Selector labels + the role label: what selects the pods of one role.
pub fn role_selector(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: &str,
) -> BTreeMap<String, String> {
    let mut labels = selector_labels(pg, config);
    labels.insert(config.pod_role_label.clone(), role.to_string());
    labels
}

/// Object labels + the role label: what role-specific objects (Services, Endpoints) carry.
pub fn role_labels(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: &str,
) -> BTreeMap<String, String> {
    let mut labels = object_labels(pg, config);
    labels.insert(config.pod_role_label.clone(), role.to_string());
    labels
}

/// The manifest annotations named in `inherited_annotations`, which every object of the
/// cluster carries.
pub fn inherited_annotations(pg: &Postgresql, config: &OperatorConfig) -> BTreeMap<String, String> {
    inherited(
        pg.metadata.annotations.as_ref(),
        &config.inherited_annotations,
    )
}

/// The controller owner reference to the `postgresql` object, so that Kubernetes' garbage
/// collector deletes the cluster's objects with the manifest (`enable_owner_references`).
/// `None` when disabled, or when the manifest has no UID yet (an owner reference without
/// one would be refused). Unlike Zalando, the manifest's own owner references are never
/// copied to the cluster's objects.
pub fn owner_references(pg: &Postgresql, config: &OperatorConfig) -> Option<Vec<OwnerReference>> {
    if !config.enable_owner_references {
        return None;
    }
    let uid = pg.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
    Some(vec![OwnerReference {
        api_version: POSTGRESQL_API_VERSION.into(),
        kind: POSTGRESQL_KIND.into(),
        name: cluster_name(pg).to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: None,
    }])
}

/// The StatefulSet's annotations: the inherited ones plus the manifest annotations whose
/// key matches one of the `downscaler_annotations` patterns (Zalando's
/// `AnnotationsToPropagate`). Patterns are regular expressions searched anywhere in the
/// key, as Go's `regexp.MatchString` does; pgop understands literals, `.`, `\` escapes,
/// `[...]` classes, the `*`, `+`, `?` quantifiers, `^`, `$` and `|`. Other syntax
/// (groups, `{n,m}`) is a configuration error.
pub fn propagated_annotations(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<BTreeMap<String, String>, BuildError> {
    let mut annotations = inherited_annotations(pg, config);
    if config.downscaler_annotations.is_empty() {
        return Ok(annotations);
    }
    let patterns = config
        .downscaler_annotations
        .iter()
        .map(|p| {
            Pattern::parse(p).map_err(|e| {
                BuildError::Config(format!("downscaler_annotations pattern {p:?}: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (key, value) in pg.metadata.annotations.iter().flatten() {
        if patterns.iter().any(|p| p.is_match(key)) {
            annotations.insert(key.clone(), value.clone());
        }
    }
    Ok(annotations)
}

/// A small regular expression: alternatives of atom sequences, searched in a text.
struct Pattern {
    alternatives: Vec<Vec<Piece>>,
}

#[derive(Clone)]
enum Piece {
    Start,
    End,
    Atom(Atom, Repeat),
}

#[derive(Clone, Copy, PartialEq)]
enum Repeat {
    One,
    ZeroOrOne,
    ZeroOrMore,
    OneOrMore,
}

#[derive(Clone)]
enum Atom {
    Any,
    Char(char),
    /// Ranges (inclusive), negated or not.
    Class(Vec<(char, char)>, bool),
}

impl Atom {
    fn matches(&self, c: char) -> bool {
        match self {
            Atom::Any => c != '\n',
            Atom::Char(want) => c == *want,
            Atom::Class(ranges, negated) => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
            }
        }
    }
}

impl Pattern {
    fn parse(pattern: &str) -> Result<Pattern, String> {
        let mut alternatives = vec![Vec::new()];
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            let atom = match c {
                '|' => {
                    alternatives.push(Vec::new());
                    continue;
                }
                '^' => {
                    alternatives.last_mut().unwrap().push(Piece::Start);
                    continue;
                }
                '$' => {
                    alternatives.last_mut().unwrap().push(Piece::End);
                    continue;
                }
                '.' => Atom::Any,
                '\\' => escaped(chars.next().ok_or("trailing backslash")?)?,
                '[' => {
                    let negated = chars.next_if_eq(&'^').is_some();
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let c = chars.next().ok_or("unclosed [")?;
                        if c == ']' && !first {
                            break;
                        }
                        first = false;
                        let lo = match c {
                            '\\' => match escaped(chars.next().ok_or("trailing backslash")?)? {
                                Atom::Char(c) => c,
                                Atom::Class(more, false) => {
                                    ranges.extend(more);
                                    continue;
                                }
                                _ => return Err("unsupported escape in a class".into()),
                            },
                            c => c,
                        };
                        let hi = if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next().ok_or("unclosed [")? {
                                ']' => {
                                    ranges.push((lo, lo));
                                    ranges.push(('-', '-'));
                                    break;
                                }
                                hi => hi,
                            }
                        } else {
                            lo
                        };
                        if hi < lo {
                            return Err(format!("invalid range {lo}-{hi}"));
                        }
                        ranges.push((lo, hi));
                    }
                    Atom::Class(ranges, negated)
                }
                '*' | '+' | '?' => return Err(format!("{c} repeats nothing")),
                '(' | ')' | '{' | '}' => {
                    return Err(format!(
                        "{c:?} is not supported (no groups or counted repetition)"
                    ))
                }
                c => Atom::Char(c),
            };
            let repeat = match chars.peek() {
                Some('*') => Repeat::ZeroOrMore,
                Some('+') => Repeat::OneOrMore,
                Some('?') => Repeat::ZeroOrOne,
                _ => Repeat::One,
            };
            if repeat != Repeat::One {
                chars.next();
                if matches!(chars.peek(), Some('*' | '+' | '?')) {
                    return Err("repeated quantifiers are not supported".into());
                }
            }
            alternatives
                .last_mut()
                .unwrap()
                .push(Piece::Atom(atom, repeat));
        }
        Ok(Pattern { alternatives })
    }

    /// Whether the pattern matches anywhere in `text`.
    fn is_match(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        self.alternatives
            .iter()
            .any(|pieces| (0..=text.len()).any(|start| matches_at(pieces, &text, start)))
    }
}

fn escaped(c: char) -> Result<Atom, String> {
    let class = |ranges: &[(char, char)]| Atom::Class(ranges.to_vec(), false);
    Ok(match c {
        'd' => class(&[('0', '9')]),
        'w' => class(&[('0', '9'), ('A', 'Z'), ('a', 'z'), ('_', '_')]),
        's' => class(&[
            (' ', ' '),
            ('\t', '\t'),
            ('\n', '\n'),
            ('\r', '\r'),
            ('\x0c', '\x0c'),
        ]),
        c if c.is_ascii_alphanumeric() => return Err(format!("unsupported escape \\{c}")),
        c => Atom::Char(c),
    })
}

/// Backtracking match of `pieces` against `text` from position `at`.
fn matches_at(pieces: &[Piece], text: &[char], at: usize) -> bool {
    let Some((piece, rest)) = pieces.split_first() else {
        return true;
    };
    match piece {
        Piece::Start => at == 0 && matches_at(rest, text, at),
        Piece::End => at == text.len() && matches_at(rest, text, at),
        Piece::Atom(atom, repeat) => {
            let (min, max) = match repeat {
                Repeat::One => (1, 1),
                Repeat::ZeroOrOne => (0, 1),
                Repeat::ZeroOrMore => (0, usize::MAX),
                Repeat::OneOrMore => (1, usize::MAX),
            };
            let available = text[at..].iter().take_while(|c| atom.matches(**c)).count();
            let most = available.min(max);
            (min..=most).rev().any(|n| matches_at(rest, text, at + n))
        }
    }
}

fn inherited(from: Option<&BTreeMap<String, String>>, keys: &[String]) -> BTreeMap<String, String> {
    from.into_iter()
        .flatten()
        .filter(|(key, _)| keys.contains(key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A parsed manifest for tests: `name` in namespace `default`.
    pub fn manifest(name: &str, yaml_spec: &str) -> Postgresql {
        let yaml = format!(
            "apiVersion: acid.zalan.do/v1\nkind: postgresql\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{yaml_spec}"
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    /// The minimal manifest of Zalando's examples.
    pub fn minimal() -> Postgresql {
        manifest(
            "acid-minimal-cluster",
            "  teamId: ACID\n  numberOfInstances: 2\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n",
        )
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_sets() {
        let mut pg = minimal();
        pg.metadata.labels = Some(map(&[("environment", "demo"), ("private", "x")]));
        pg.metadata.annotations = Some(map(&[("owner", "db-team"), ("other", "y")]));
        let config = OperatorConfig {
            inherited_labels: vec!["environment".into(), "absent".into()],
            inherited_annotations: vec!["owner".into()],
            cluster_labels: map(&[("application", "spilo"), ("tier", "db")]),
            ..OperatorConfig::default()
        };
        let selector = map(&[
            ("application", "spilo"),
            ("tier", "db"),
            ("cluster-name", "acid-minimal-cluster"),
        ]);
        type Labels = BTreeMap<String, String>;
        let cases: &[(&str, Labels, Labels)] = &[
            ("selector", selector_labels(&pg, &config), selector.clone()),
            (
                "object",
                object_labels(&pg, &config),
                map(&[
                    ("application", "spilo"),
                    ("tier", "db"),
                    ("cluster-name", "acid-minimal-cluster"),
                    ("team", "ACID"),
                    ("environment", "demo"),
                ]),
            ),
            (
                "role selector",
                role_selector(&pg, &config, REPLICA_ROLE),
                map(&[
                    ("application", "spilo"),
                    ("tier", "db"),
                    ("cluster-name", "acid-minimal-cluster"),
                    ("spilo-role", "replica"),
                ]),
            ),
            (
                "role labels",
                role_labels(&pg, &config, MASTER_ROLE),
                map(&[
                    ("application", "spilo"),
                    ("tier", "db"),
                    ("cluster-name", "acid-minimal-cluster"),
                    ("team", "ACID"),
                    ("environment", "demo"),
                    ("spilo-role", "master"),
                ]),
            ),
            (
                "annotations",
                inherited_annotations(&pg, &config),
                map(&[("owner", "db-team")]),
            ),
        ];
        for (what, got, want) in cases {
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn custom_label_names_and_no_inheritance_by_default() {
        let mut pg = minimal();
        pg.metadata.labels = Some(map(&[("environment", "demo")]));
        let config = OperatorConfig {
            cluster_name_label: "cluster".into(),
            pod_role_label: "role".into(),
            ..OperatorConfig::default()
        };
        assert_eq!(
            role_labels(&pg, &config, MASTER_ROLE),
            map(&[
                ("application", "spilo"),
                ("cluster", "acid-minimal-cluster"),
                ("team", "ACID"),
                ("role", "master"),
            ])
        );
        assert!(inherited_annotations(&pg, &config).is_empty());
    }

    #[test]
    fn owner_references_to_the_manifest() {
        let mut pg = minimal();
        let enabled = OperatorConfig {
            enable_owner_references: true,
            ..OperatorConfig::default()
        };
        assert_eq!(owner_references(&pg, &enabled), None, "no UID yet");
        pg.metadata.uid = Some("0d1f-42".into());
        assert_eq!(
            owner_references(&pg, &OperatorConfig::default()),
            None,
            "disabled by default"
        );
        // The manifest's own owner references are not copied (Zalando copies them).
        pg.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "other".into(),
            uid: "1".into(),
            ..OwnerReference::default()
        }]);
        assert_eq!(
            owner_references(&pg, &enabled),
            Some(vec![OwnerReference {
                api_version: "acid.zalan.do/v1".into(),
                kind: "postgresql".into(),
                name: "acid-minimal-cluster".into(),
                uid: "0d1f-42".into(),
                controller: Some(true),
                block_owner_deletion: None,
            }])
        );
    }

    #[test]
    fn downscaler_annotations_are_regular_expressions() {
        let mut pg = minimal();
        pg.metadata.annotations = Some(map(&[
            ("deployment-time", "2020-04-30 12:00:00"),
            ("downscaler/downtime_replicas", "0"),
            ("my-downscaler", "x"),
            ("owner", "db-team"),
            ("unrelated", "y"),
        ]));
        let config = |patterns: &[&str]| OperatorConfig {
            downscaler_annotations: patterns.iter().map(|p| p.to_string()).collect(),
            inherited_annotations: vec!["owner".into()],
            ..OperatorConfig::default()
        };
        let keys = |patterns: &[&str]| -> Vec<String> {
            propagated_annotations(&pg, &config(patterns))
                .unwrap()
                .into_keys()
                .collect()
        };
        // Zalando's example: unanchored, so "downscaler/*" also matches "my-downscaler".
        assert_eq!(
            keys(&["deployment-time", "downscaler/*"]),
            [
                "deployment-time",
                "downscaler/downtime_replicas",
                "my-downscaler",
                "owner"
            ]
        );
        assert_eq!(
            keys(&["^downscaler/.+$"]),
            ["downscaler/downtime_replicas", "owner"]
        );
        assert_eq!(keys(&[]), ["owner"], "inherited annotations only");
        assert_eq!(keys(&["^un[a-r]+ated$|^nothing"]), ["owner", "unrelated"]);
        assert_eq!(keys(&["deployment\\-\\w+"]), ["deployment-time", "owner"]);
        for bad in ["(a|b)", "a{2}", "[a", "*a", "\\p"] {
            assert!(
                matches!(
                    propagated_annotations(&pg, &config(&[bad])),
                    Err(BuildError::Config(m)) if m.contains("downscaler_annotations")
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn pattern_matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("abc", "xxabcxx", true),
            ("^abc", "xxabc", false),
            ("abc$", "abcx", false),
            ("a.c", "abc", true),
            ("a.c", "ac", false),
            ("ab*c", "ac", true),
            ("ab+c", "ac", false),
            ("ab?c", "abbc", false),
            ("^a[^0-9]*$", "abc", true),
            ("^a[^0-9]*$", "ab1", false),
            ("^x|y$", "ay", true),
            ("\\d\\d", "a12", true),
            ("[]a]", "]", true),
            ("^[a-]$", "-", true),
            ("\\.", "a", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                Pattern::parse(pattern).unwrap().is_match(text),
                *want,
                "{pattern} ~ {text}"
            );
        }
    }
}
