//! How a container image is run on this machine.
pub mod image;
pub mod pgbouncer;
pub mod process;
pub mod sandbox;
pub mod spilo;

/// The runtime an image gets.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeKind {
    /// Patroni + PostgreSQL configured from the Spilo environment.
    Spilo,
    Pgbouncer,
    /// The container's own command, with this directory as the image's binaries.
    Image(std::path::PathBuf),
    /// A stand-in shell command.
    StandIn(String),
}

/// Stand-in overrides first, then images mapped to binaries, then Spilo and pgbouncer images
/// by name, then the default stand-in.
pub fn runtime_for(
    image: &str,
    overrides: &[(String, String)],
    binaries: &[(String, std::path::PathBuf)],
    default_command: &str,
) -> RuntimeKind {
    if let Some((_, command)) = overrides
        .iter()
        .find(|(pattern, _)| image.contains(pattern.as_str()))
    {
        return RuntimeKind::StandIn(command.clone());
    }
    if let Some(dir) = image::binaries_for(image, binaries) {
        return RuntimeKind::Image(dir);
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    if name.starts_with("spilo") {
        RuntimeKind::Spilo
    } else if name.starts_with("pgbouncer") {
        RuntimeKind::Pgbouncer
    } else {
        RuntimeKind::StandIn(default_command.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_map_to_runtimes() {
        let overrides = vec![("logical-backup".to_string(), "echo backup".to_string())];
        let binaries = vec![("pgop".to_string(), std::path::PathBuf::from("/w/bin"))];
        let cases = [
            ("ghcr.io/zalando/spilo-15:3.0-p1", RuntimeKind::Spilo),
            (
                "registry.opensource.zalan.do/acid/pgbouncer:master-27",
                RuntimeKind::Pgbouncer,
            ),
            (
                "registry.opensource.zalan.do/acid/logical-backup:v1.10.0",
                RuntimeKind::StandIn("echo backup".into()),
            ),
            ("busybox", RuntimeKind::StandIn("exit 0".into())),
            (
                "registry.example.com/pgop:v2",
                RuntimeKind::Image("/w/bin".into()),
            ),
            ("pgop-ui:1", RuntimeKind::StandIn("exit 0".into())),
            (
                "example.com/not-spilo:1",
                RuntimeKind::StandIn("exit 0".into()),
            ),
        ];
        for (image, want) in cases {
            assert_eq!(
                runtime_for(image, &overrides, &binaries, "exit 0"),
                want,
                "{image}"
            );
        }
    }
}
