//! Process settings: defaults < file (`--config FILE` or `PGOP_CONFIG`) < environment
//! (`PGOP_<FIELD>` in upper case, e.g. `PGOP_GRPC_ADDR`).
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[error("settings: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

/// Loads `T`, whose `Default` supplies the defaults.
pub fn load<T: DeserializeOwned + serde::Serialize + Default>(
    file: Option<&str>,
) -> Result<T, SettingsError> {
    let defaults = config::Config::try_from(&T::default())?;
    let mut builder = config::Config::builder().add_source(defaults);
    let file = file
        .map(str::to_string)
        .or_else(|| std::env::var("PGOP_CONFIG").ok());
    if let Some(path) = file {
        builder = builder.add_source(config::File::with_name(&path));
    }
    let settings = builder
        .add_source(config::Environment::with_prefix("PGOP").try_parsing(true))
        .build()?;
    Ok(settings.try_deserialize()?)
}

/// Settings with a log format, so [`start`] can set up logging.
pub trait ProcessSettings: DeserializeOwned + serde::Serialize + Default {
    fn log_format(&self) -> &str;
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("installing signal handlers: {0}")]
    Signals(#[from] std::io::Error),
}

/// What every pgop process does first: load its settings (`--config FILE` honoured), set up
/// logging, and get the token that SIGTERM/SIGINT cancel.
pub fn start<T: ProcessSettings>() -> Result<(T, tokio_util::sync::CancellationToken), StartError> {
    start_with(tracing_subscriber::layer::Identity::new())
}

/// [`start`], with an extra logging layer (see [`crate::telemetry::init_with`]).
pub fn start_with<T, L>(layer: L) -> Result<(T, tokio_util::sync::CancellationToken), StartError>
where
    T: ProcessSettings,
    L: tracing_subscriber::Layer<
            tracing_subscriber::layer::Layered<
                tracing_subscriber::EnvFilter,
                tracing_subscriber::Registry,
            >,
        > + Send
        + Sync
        + 'static,
{
    let settings: T = load(config_flag().as_deref())?;
    crate::telemetry::init_with(settings.log_format(), layer);
    let shutdown = crate::shutdown::on_signals()?;
    Ok((settings, shutdown))
}

/// `--config FILE` from the command line, if given.
pub fn config_flag() -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next();
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    struct Example {
        grpc_addr: String,
        capacity: u32,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                grpc_addr: "127.0.0.1:1".into(),
                capacity: 4,
            }
        }
    }

    #[test]
    fn file_overrides_defaults_and_environment_overrides_file() {
        let dir = std::env::temp_dir().join(format!("pgop-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("example.toml");
        std::fs::write(&file, "capacity = 9\ngrpc_addr = \"127.0.0.1:2\"\n").unwrap();
        let from_file: Example = load(Some(file.to_str().unwrap())).unwrap();
        assert_eq!(
            from_file,
            Example {
                grpc_addr: "127.0.0.1:2".into(),
                capacity: 9
            }
        );
        // SAFETY: this is the only test of the crate that touches this variable.
        unsafe { std::env::set_var("PGOP_CAPACITY", "11") };
        let from_env: Example = load(Some(file.to_str().unwrap())).unwrap();
        unsafe { std::env::remove_var("PGOP_CAPACITY") };
        assert_eq!(from_env.capacity, 11);
        assert_eq!(from_env.grpc_addr, "127.0.0.1:2");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
