//! The checks that put a cluster in status `Invalid` instead of building anything: those
//! of Zalando's manifest decoding (`marshal.go`, `util.go`: cluster name, clone source,
//! maintenance windows) and of its controller (`{team}-` prefix when
//! `enable_team_id_clustername_prefix`), plus manifest errors Zalando only finds while
//! creating objects (quantities, containers without image, sidecars and init containers the
//! configuration disables, clashing additional volumes, node ports). Role names and flags
//! are the role layer's: a bad one is refused alone and the cluster keeps running.
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use super::services::node_port_problems;
use super::statefulset::pod_problems;
use super::{cluster_name, quantity, BuildError};

/// Longest name a Service may have (DNS-1035 label).
const SERVICE_NAME_MAX_LENGTH: usize = 63;
/// The replica Service `<cluster>-repl` must fit in a Service name.
pub const CLUSTER_NAME_MAX_LENGTH: usize = SERVICE_NAME_MAX_LENGTH - "-repl".len();
const WEEKDAYS: &[&str] = &["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// Every problem of the manifest, joined into one message for the cluster's status.
pub fn validate(pg: &Postgresql, config: &OperatorConfig) -> Result<(), BuildError> {
    let mut problems = Vec::new();
    let name = cluster_name(pg);
    if let Err(problem) = service_compatible_name(name, "cluster name", CLUSTER_NAME_MAX_LENGTH) {
        problems.push(problem);
    }
    if config.enable_team_id_clustername_prefix {
        if let Err(problem) = team_prefixed_name(name, &pg.spec.team_id) {
            problems.push(problem);
        }
    }
    let spec = &pg.spec;
    if let Some(clone) = &spec.clone {
        // Without a timestamp the clone connects to the source's Service by its name.
        let from_running_source = clone.timestamp.as_deref().unwrap_or_default().is_empty();
        if !clone.cluster.is_empty() && from_running_source {
            if let Err(problem) = service_compatible_name(
                &clone.cluster,
                "clone cluster name",
                SERVICE_NAME_MAX_LENGTH,
            ) {
                problems.push(problem);
            }
        }
    }
    if spec.number_of_instances < 0 {
        problems.push(format!(
            "numberOfInstances is {}, it cannot be negative",
            spec.number_of_instances
        ));
    }
    if let Err(problem) = volume_size(&spec.volume.size) {
        problems.push(problem);
    }
    if let Err(problem) = postgres_version(&spec.postgresql.version) {
        problems.push(problem);
    }
    problems.extend(resource_problems(pg));
    problems.extend(
        spec.maintenance_windows
            .iter()
            .filter_map(|window| maintenance_window(window).err()),
    );
    for (kind, containers) in [
        ("initContainers", &spec.init_containers),
        ("sidecars", &spec.sidecars),
    ] {
        for (i, container) in containers.iter().enumerate() {
            if container.name.is_empty() {
                problems.push(format!("{kind}[{i}] has no name"));
            }
            if container.image.as_deref().unwrap_or_default().is_empty() {
                problems.push(format!("{kind}[{i}] ({:?}) has no image", container.name));
            }
        }
    }
    problems.extend(pod_problems(pg, config));
    problems.extend(node_port_problems(pg));
    match problems.is_empty() {
        true => Ok(()),
        false => Err(BuildError::Invalid(problems.join("; "))),
    }
}

/// The name without its `<team>-` prefix, if `name` is `<team>-<something>` (the team
/// compared case-insensitively) and a valid cluster name (Zalando's `extractClusterName`).
pub fn team_prefixed_name<'a>(name: &'a str, team: &str) -> Result<&'a str, String> {
    if team.is_empty() {
        return Err("teamId is empty, but the cluster name must start with \"<teamId>-\"".into());
    }
    let prefix_len = team.len() + 1;
    let has_prefix = name.len() > prefix_len
        && name.is_char_boundary(prefix_len)
        && name[..prefix_len].eq_ignore_ascii_case(&format!("{team}-"));
    if !has_prefix {
        return Err(format!(
            "cluster name {name:?} must start with the team's prefix \"{}-\" followed by a name",
            team.to_lowercase()
        ));
    }
    service_compatible_name(name, "cluster name", CLUSTER_NAME_MAX_LENGTH)?;
    Ok(&name[prefix_len..])
}

/// A DNS-1035 label of at most `max` characters: lowercase letters, digits and `-`,
/// starting with a letter and not ending with `-`.
fn service_compatible_name(name: &str, what: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if name.len() > max {
        return Err(format!(
            "{what} {name:?} is {} characters long, at most {max} are allowed",
            name.len()
        ));
    }
    let bytes = name.as_bytes();
    let valid = bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-');
    if !valid {
        return Err(format!(
            "{what} {name:?} must consist of lowercase letters, digits and '-', start with a letter and end with a letter or digit (DNS-1035)"
        ));
    }
    Ok(())
}

fn volume_size(size: &str) -> Result<(), String> {
    if size.is_empty() {
        return Err("volume.size is missing (e.g. \"10Gi\")".into());
    }
    match quantity::parse(size) {
        Ok(value) if value > 0 => Ok(()),
        Ok(_) => Err(format!("volume.size {size:?} must be larger than zero")),
        Err(e) => Err(format!(
            "volume.size {size:?} is not a Kubernetes quantity such as \"10Gi\" ({e})"
        )),
    }
}

fn postgres_version(version: &str) -> Result<(), String> {
    if version.is_empty() {
        return Err("postgresql.version is missing (e.g. \"17\")".into());
    }
    let numeric = version
        .split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    if !numeric || version.split('.').count() > 2 {
        return Err(format!(
            "postgresql.version {version:?} is not a PostgreSQL major version (e.g. \"17\")"
        ));
    }
    Ok(())
}

/// Quantities of `resources`; Zalando treats `""`, `"0"` and `"null"` as not set.
fn resource_problems(pg: &Postgresql) -> Vec<String> {
    let Some(resources) = &pg.spec.resources else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (kind, description) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let Some(d) = description else { continue };
        for (resource, value) in [
            ("cpu", &d.cpu),
            ("memory", &d.memory),
            ("hugepages-2Mi", &d.hugepages_2mi),
            ("hugepages-1Gi", &d.hugepages_1gi),
        ] {
            let Some(value) = value.as_deref() else {
                continue;
            };
            if matches!(value, "" | "0" | "null") {
                continue;
            }
            if let Err(e) = quantity::parse(value) {
                problems.push(format!(
                    "resources.{kind}.{resource} {value:?} is not a Kubernetes quantity ({e})"
                ));
            }
        }
    }
    problems
}

/// `[Ddd:]HH:MM-HH:MM` with the end not before the start, e.g. `Sat:22:00-23:59`.
fn maintenance_window(window: &str) -> Result<(), String> {
    let invalid = |why: &str| {
        format!("maintenance window {window:?} is invalid ({why}); expected \"[Ddd:]HH:MM-HH:MM\", e.g. \"Sat:22:00-23:59\" or \"01:00-06:00\"")
    };
    let (from, to) = window
        .split_once('-')
        .filter(|(_, to)| !to.contains('-'))
        .ok_or_else(|| invalid("one '-' separates start and end"))?;
    let from_parts: Vec<&str> = from.split(':').collect();
    let start = match from_parts.as_slice() {
        [day, hour, minute] => {
            if !WEEKDAYS.contains(day) {
                return Err(invalid("unknown weekday"));
            }
            time_of_day(hour, minute)
        }
        [hour, minute] => time_of_day(hour, minute),
        _ => None,
    }
    .ok_or_else(|| invalid("bad start time"))?;
    let end = to
        .split_once(':')
        .and_then(|(hour, minute)| time_of_day(hour, minute))
        .ok_or_else(|| invalid("bad end time"))?;
    if end < start {
        return Err(invalid("the end is before the start"));
    }
    Ok(())
}

/// Minutes since midnight of `H[H]` and `MM`, as Go's `15:04` layout reads them.
fn time_of_day(hour: &str, minute: &str) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(hour) && hour.len() <= 2 && digits(minute) && minute.len() == 2) {
        return None;
    }
    let (hour, minute): (u32, u32) = (hour.parse().ok()?, minute.parse().ok()?);
    (hour < 24 && minute < 60).then_some(hour * 60 + minute)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::builders::labels::tests::manifest;

    const VALID_SPEC: &str =
        "  teamId: acid\n  numberOfInstances: 2\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n";

    fn spec_with(extra: &str) -> String {
        format!("{VALID_SPEC}{extra}")
    }

    #[test]
    fn manifests() {
        let long_name = format!("acid-{}", "x".repeat(53));
        let too_long_name = format!("acid-{}", "x".repeat(54));
        let prefixed = OperatorConfig {
            enable_team_id_clustername_prefix: true,
            ..OperatorConfig::default()
        };
        let default = OperatorConfig::default();
        let no_sidecars = OperatorConfig {
            enable_sidecars: false,
            ..OperatorConfig::default()
        };
        let no_init_containers = OperatorConfig {
            enable_init_containers: false,
            ..OperatorConfig::default()
        };
        // (cluster name, spec, config, None if valid / Some(message fragment))
        let cases: Vec<(&str, String, &OperatorConfig, Option<&str>)> = vec![
            ("acid-minimal-cluster", spec_with(""), &default, None),
            (&long_name, spec_with(""), &default, None),
            (&too_long_name, spec_with(""), &default, Some("at most 58 are allowed")),
            ("Acid-Upper", spec_with(""), &default, Some("DNS-1035")),
            ("acid-", spec_with(""), &default, Some("DNS-1035")),
            ("1acid", spec_with(""), &default, Some("DNS-1035")),
            ("acid_x", spec_with(""), &default, Some("DNS-1035")),
            ("minimal", spec_with(""), &default, None),
            ("minimal", spec_with(""), &prefixed, Some("team's prefix \"acid-\"")),
            ("acid-minimal", spec_with(""), &prefixed, None),
            (
                "acid-minimal",
                VALID_SPEC.replace("teamId: acid", "teamId: ACID"),
                &prefixed,
                None,
            ),
            ("acid-", spec_with(""), &prefixed, Some("team's prefix")),
            (
                "acid-minimal",
                VALID_SPEC.replace("teamId: acid", "teamId: \"\""),
                &prefixed,
                Some("teamId is empty"),
            ),
            (
                "acid-x",
                VALID_SPEC.replace("numberOfInstances: 2", "numberOfInstances: -1"),
                &default,
                Some("numberOfInstances is -1"),
            ),
            (
                "acid-x",
                VALID_SPEC.replace("size: 1Gi", "size: 10 GB"),
                &default,
                Some("volume.size \"10 GB\" is not a Kubernetes quantity"),
            ),
            (
                "acid-x",
                VALID_SPEC.replace("size: 1Gi", "size: \"\""),
                &default,
                Some("volume.size is missing"),
            ),
            (
                "acid-x",
                VALID_SPEC.replace("size: 1Gi", "size: \"0\""),
                &default,
                Some("larger than zero"),
            ),
            (
                "acid-x",
                VALID_SPEC.replace("version: \"15\"", "version: \"\""),
                &default,
                Some("postgresql.version is missing"),
            ),
            (
                "acid-x",
                VALID_SPEC.replace("version: \"15\"", "version: latest"),
                &default,
                Some("not a PostgreSQL major version"),
            ),
            (
                "acid-x",
                VALID_SPEC.replace("version: \"15\"", "version: \"9.6\""),
                &default,
                None,
            ),
            (
                "acid-x",
                spec_with("  resources:\n    requests: {cpu: \"0\", memory: 100Mi}\n    limits: {cpu: one}\n"),
                &default,
                Some("resources.limits.cpu \"one\""),
            ),
            (
                "acid-x",
                spec_with("  clone: {cluster: Source_Cluster}\n"),
                &default,
                Some("clone cluster name"),
            ),
            (
                "acid-x",
                spec_with("  clone: {cluster: Source_Cluster, timestamp: \"2017-12-19T12:40:33+01:00\"}\n"),
                &default,
                None,
            ),
            (
                "acid-x",
                spec_with("  users:\n    zalando: [superuser, createdb]\n    foo_user: []\n    app.reader: [nologin]\n"),
                &default,
                None,
            ),
            (
                "acid-x",
                spec_with("  maintenanceWindows: [\"01:00-06:00\", \"Sat:00:00-04:00\", \"Sun:9:30-23:59\"]\n"),
                &default,
                None,
            ),
            (
                "acid-x",
                spec_with("  maintenanceWindows: [\"Sat:06:00-04:00\"]\n"),
                &default,
                Some("the end is before the start"),
            ),
            (
                "acid-x",
                spec_with("  maintenanceWindows: [\"Caturday:01:00-02:00\"]\n"),
                &default,
                Some("unknown weekday"),
            ),
            (
                "acid-x",
                spec_with("  maintenanceWindows: [\"25:00-26:00\"]\n"),
                &default,
                Some("bad start time"),
            ),
            (
                "acid-x",
                spec_with("  initContainers:\n  - {name: date}\n"),
                &default,
                Some("initContainers[0] (\"date\") has no image"),
            ),
            (
                "acid-x",
                spec_with("  sidecars:\n  - {name: exporter, image: exporter:1}\n"),
                &no_sidecars,
                Some("sidecar containers are disabled by the operator configuration (enable_sidecars)"),
            ),
            (
                "acid-x",
                spec_with("  initContainers:\n  - {name: date, image: busybox}\n"),
                &no_init_containers,
                Some("init containers are disabled by the operator configuration (enable_init_containers)"),
            ),
            (
                "acid-x",
                spec_with("  additionalVolumes:\n  - {name: data, mountPath: /home/postgres/pgdata, volumeSource: {emptyDir: {}}}\n"),
                &default,
                Some("cannot be mounted at /home/postgres/pgdata, the mount path of the data directory"),
            ),
            (
                "acid-x",
                spec_with("  enableMasterNodePort: true\n  masterNodePort: 70000\n"),
                &default,
                Some("masterNodePort 70000 is not a port"),
            ),
            (
                "acid-x",
                spec_with("  enableMasterNodePort: false\n  masterNodePort: 70000\n"),
                &default,
                None,
            ),
        ];
        for (name, spec, config, want) in cases {
            let pg = manifest(name, &spec);
            let result = validate(&pg, config);
            match (want, result) {
                (None, Ok(())) => {}
                (Some(fragment), Err(BuildError::Invalid(message))) => assert!(
                    message.contains(fragment),
                    "{name}: {message:?} lacks {fragment:?}"
                ),
                (want, got) => panic!("{name} / {spec}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn all_problems_are_reported_together() {
        let pg = manifest(
            "Bad",
            &VALID_SPEC
                .replace("numberOfInstances: 2", "numberOfInstances: -2")
                .replace("size: 1Gi", "size: lots"),
        );
        let Err(BuildError::Invalid(message)) = validate(&pg, &OperatorConfig::default()) else {
            panic!("must be invalid");
        };
        for fragment in [
            "cluster name \"Bad\"",
            "numberOfInstances is -2",
            "volume.size \"lots\"",
        ] {
            assert!(message.contains(fragment), "{message} lacks {fragment}");
        }
        assert_eq!(message.matches("; ").count(), 2, "{message}");
    }

    #[test]
    fn team_prefix_extraction() {
        let cases = [
            ("acid-minimal", "acid", Some("minimal")),
            ("acid-minimal", "ACID", Some("minimal")),
            ("acid-m", "acid", Some("m")),
            ("acid-", "acid", None),
            ("acidminimal", "acid", None),
            ("foo-minimal", "acid", None),
            ("acid-minimal", "", None),
        ];
        for (name, team, want) in cases {
            assert_eq!(team_prefixed_name(name, team).ok(), want, "{name} {team}");
        }
    }
}
