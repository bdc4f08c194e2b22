//! pgop's watcher: the one component that watches Kubernetes.
pub mod children;
pub mod kube_watch;
pub mod service;
pub mod store;

/// The environment variable that names the `OperatorConfiguration` object to read the
/// operator configuration from, as in Zalando's operator. Set and not empty, it wins over
/// [`Settings::operator_configuration_object`].
pub const OPERATOR_CONFIGURATION_OBJECT_ENV: &str = "POSTGRES_OPERATOR_CONFIGURATION_OBJECT";

/// Settings (defaults < `--config FILE` < `PGOP_*` environment). `WATCHED_NAMESPACE` in the
/// environment overrides both the file and the operator configuration's `watched_namespace`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub grpc_addr: String,
    /// Namespace of the operator itself and of its configuration (ConfigMap or
    /// OperatorConfiguration).
    pub namespace: String,
    /// The ConfigMap holding the operator configuration, unless an OperatorConfiguration is
    /// named (below).
    pub config_map_name: String,
    /// `operator_configuration_object` (default empty: the ConfigMap is read): the name of an
    /// `OperatorConfiguration` (acid.zalan.do/v1) in `namespace` that holds the operator
    /// configuration instead of the ConfigMap `config_map_name`, which is then not read.
    /// `POSTGRES_OPERATOR_CONFIGURATION_OBJECT`, when set and not empty, wins over it (as in
    /// Zalando's operator). The object is watched like the ConfigMap: an invalid one is
    /// refused (the last good configuration stays), a missing one means defaults.
    pub operator_configuration_object: String,
    /// Overrides the configuration's resync_period when set (seconds).
    pub resync_period_seconds: Option<u64>,
    pub log_format: String,
    /// Run as one of several replicas: the one holding the Lease `pgop-watcher` in
    /// `namespace` serves subscriptions, the others keep their watches warm and refuse them
    /// (UNAVAILABLE) until they take over.
    pub leader_election: bool,
    /// How long the lease lasts without renewal: a killed leader's standby takes over after
    /// at most this long.
    pub lease_duration_seconds: u64,
    /// This replica among the candidates; `POD_NAME`, else `HOSTNAME`, if empty.
    pub identity: String,
    /// The admin port: `/livez`, `/readyz` (ready once every watch has listed, standby or
    /// not); empty: not served.
    pub admin_addr: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc_addr: "127.0.0.1:50050".into(),
            namespace: std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into()),
            config_map_name: "postgres-operator".into(),
            operator_configuration_object: String::new(),
            resync_period_seconds: None,
            log_format: "text".into(),
            leader_election: false,
            lease_duration_seconds: 15,
            identity: String::new(),
            admin_addr: String::new(),
        }
    }
}

/// The Lease the watcher replicas compete for.
pub const LEASE_NAME: &str = "pgop-watcher";

/// Where the operator configuration comes from: one object, by name, in the watcher's
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Zalando's `postgres-operator` ConfigMap: flat string keys.
    ConfigMap(String),
    /// An `OperatorConfiguration` custom resource: grouped, typed keys, flattened into the
    /// ConfigMap's keys (`pgop_common::config::flatten_operator_configuration`).
    OperatorConfiguration(String),
}

impl ConfigSource {
    pub fn name(&self) -> &str {
        match self {
            ConfigSource::ConfigMap(name) | ConfigSource::OperatorConfiguration(name) => name,
        }
    }

    /// For logs and errors: `ConfigMap ns/name`, `OperatorConfiguration ns/name`.
    pub fn shown(&self, namespace: &str) -> String {
        let kind = match self {
            ConfigSource::ConfigMap(_) => "ConfigMap",
            ConfigSource::OperatorConfiguration(_) => "OperatorConfiguration",
        };
        format!("{kind} {namespace}/{}", self.name())
    }
}

impl Settings {
    /// Where the operator configuration comes from, given the value of
    /// `POSTGRES_OPERATOR_CONFIGURATION_OBJECT` (`env`): an OperatorConfiguration when that or
    /// the `operator_configuration_object` setting names one (the environment wins; empty
    /// counts as unset, as in Zalando's operator), else the ConfigMap `config_map_name`.
    pub fn config_source(&self, env: Option<&str>) -> ConfigSource {
        let object = env
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .unwrap_or(self.operator_configuration_object.trim());
        if object.is_empty() {
            ConfigSource::ConfigMap(self.config_map_name.clone())
        } else {
            ConfigSource::OperatorConfiguration(object.to_string())
        }
    }
}

impl pgop_common::settings::ProcessSettings for Settings {
    fn log_format(&self) -> &str {
        &self.log_format
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(object: &str) -> Settings {
        Settings {
            namespace: "pgop-system".into(),
            operator_configuration_object: object.into(),
            ..Settings::default()
        }
    }

    #[test]
    fn the_config_map_by_default() {
        let source = settings("").config_source(None);
        assert_eq!(source, ConfigSource::ConfigMap("postgres-operator".into()));
        assert_eq!(
            source.shown("pgop-system"),
            "ConfigMap pgop-system/postgres-operator"
        );
        let renamed = Settings {
            config_map_name: "other".into(),
            ..settings("")
        };
        assert_eq!(
            renamed.config_source(Some("")),
            ConfigSource::ConfigMap("other".into()),
            "an empty variable is unset, as in Zalando's operator"
        );
    }

    #[test]
    fn an_operator_configuration_from_the_setting_or_the_environment() {
        let from_setting = settings("from-file").config_source(None);
        assert_eq!(
            from_setting,
            ConfigSource::OperatorConfiguration("from-file".into())
        );
        assert_eq!(
            from_setting.shown("pgop-system"),
            "OperatorConfiguration pgop-system/from-file"
        );
        for object in ["", "from-file"] {
            assert_eq!(
                settings(object).config_source(Some("from-env")),
                ConfigSource::OperatorConfiguration("from-env".into()),
                "the environment wins over {object:?}"
            );
            assert_eq!(
                settings(object).config_source(Some(" ")),
                settings(object).config_source(None),
                "a blank variable does not count"
            );
        }
    }

    #[test]
    fn the_setting_is_read_from_a_settings_file() {
        let dir =
            std::env::temp_dir().join(format!("pgop-watcher-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("watcher.toml");
        std::fs::write(
            &file,
            "operator_configuration_object = \"postgresql-operator-default-configuration\"\n",
        )
        .unwrap();
        let loaded = pgop_common::settings::load::<Settings>(Some(file.to_str().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
        let loaded = loaded.unwrap();
        assert_eq!(
            loaded.config_source(None),
            ConfigSource::OperatorConfiguration("postgresql-operator-default-configuration".into())
        );
        assert_eq!(Settings::default().operator_configuration_object, "");
    }
}
