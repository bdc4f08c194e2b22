//! Volume resizing (`storage_resize_mode`): which of the cluster's data volume claims grow
//! to the manifest's `volume.size`. Claims only grow; a smaller size is refused with a
//! message, never applied (Kubernetes cannot shrink a volume, and a failed attempt would
//! repeat on every sync).
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use super::quantity;

/// What to do with the claims of one cluster.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ClaimResize {
    /// Claims (by name) whose storage request becomes `size`.
    pub grow: Vec<String>,
    pub size: String,
    /// Why the manifest's size is not applied, for the status and an Event.
    pub problems: Vec<String>,
}

/// The claims among `claims` (name, requested storage) to grow to the manifest's size.
pub fn claim_resize(
    pg: &Postgresql,
    config: &OperatorConfig,
    claims: &[(String, Option<String>)],
) -> ClaimResize {
    let size = pg.spec.volume.size.clone();
    let mut resize = ClaimResize {
        size: size.clone(),
        ..ClaimResize::default()
    };
    match config.storage_resize_mode.as_str() {
        "pvc" | "mixed" => {}
        "off" => return resize,
        "ebs" => {
            resize.problems.push(
                "storage_resize_mode \"ebs\" resizes through the AWS API, which pgop does not do: volumes are not resized (use \"pvc\")"
                    .into(),
            );
            return resize;
        }
        other => {
            resize.problems.push(format!(
                "storage_resize_mode {other:?} is none of pvc, mixed, ebs, off: volumes are not resized"
            ));
            return resize;
        }
    }
    // The builder of the StatefulSet refuses a size that is not a quantity.
    let Ok(wanted) = quantity::parse(&size) else {
        return resize;
    };
    for (name, requested) in claims {
        let Some(requested) = requested.as_deref() else {
            continue;
        };
        let Ok(have) = quantity::parse(requested) else {
            continue;
        };
        if have < wanted {
            resize.grow.push(name.clone());
        } else if have > wanted {
            resize.problems.push(format!(
                "volume.size {size} is smaller than the volume claim {name} ({requested}): volumes are never shrunk"
            ));
        }
    }
    resize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::roles::desired::tests::manifest;

    fn claims(sizes: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        sizes
            .iter()
            .map(|(n, s)| (n.to_string(), s.map(str::to_string)))
            .collect()
    }

    #[test]
    fn claims_grow_and_never_shrink() {
        let pg = manifest(
            "acid-v",
            "  teamId: acid\n  numberOfInstances: 2\n  volume: {size: 2Gi}\n  postgresql: {version: \"15\"}\n",
        );
        let mode = |mode: &str| OperatorConfig {
            storage_resize_mode: mode.into(),
            ..OperatorConfig::default()
        };
        // (mode, claims, grown, problems)
        type Case<'a> = (
            &'a str,
            Vec<(&'a str, Option<&'a str>)>,
            Vec<&'a str>,
            usize,
        );
        let table: Vec<Case> = vec![
            (
                "pvc",
                vec![("a-0", Some("2Gi")), ("a-1", Some("2048Mi"))],
                vec![],
                0,
            ),
            (
                "pvc",
                vec![("a-0", Some("1Gi")), ("a-1", Some("2Gi"))],
                vec!["a-0"],
                0,
            ),
            ("mixed", vec![("a-0", Some("1Gi"))], vec!["a-0"], 0),
            (
                "pvc",
                vec![("a-0", Some("3Gi")), ("a-1", Some("1Gi"))],
                vec!["a-1"],
                1,
            ),
            ("pvc", vec![("a-0", None)], vec![], 0),
            ("off", vec![("a-0", Some("1Gi"))], vec![], 0),
            ("ebs", vec![("a-0", Some("1Gi"))], vec![], 1),
            ("sideways", vec![("a-0", Some("1Gi"))], vec![], 1),
        ];
        for (m, sizes, grown, problems) in table {
            let resize = claim_resize(&pg, &mode(m), &claims(&sizes));
            assert_eq!(resize.grow, grown, "{m} {sizes:?}");
            assert_eq!(resize.problems.len(), problems, "{m} {sizes:?}: {resize:?}");
            assert_eq!(resize.size, "2Gi");
        }
        let shrink = claim_resize(&pg, &mode("pvc"), &claims(&[("a-0", Some("3Gi"))]));
        assert_eq!(
            shrink.problems,
            vec!["volume.size 2Gi is smaller than the volume claim a-0 (3Gi): volumes are never shrunk"]
        );
    }
}
