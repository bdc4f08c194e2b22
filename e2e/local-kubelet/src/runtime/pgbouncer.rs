//! pgbouncer configuration from a pooler container's environment, following the variables
//! Zalando's pooler deployment sets (PGHOST, PGPORT, PGUSER, PGSCHEMA, PGPASSWORD,
//! CONNECTION_POOLER_*). A `pgbouncer.ini` mounted into the container takes precedence.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PgbouncerError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
}

pub struct PgbouncerInput<'a> {
    pub env: &'a BTreeMap<String, String>,
    pub pod_ip: Ipv4Addr,
    /// PGHOST resolved to an address reachable from this machine.
    pub upstream_host: &'a str,
    pub run_dir: &'a Path,
    pub socket_dir: &'a Path,
}

/// (pgbouncer.ini, userlist.txt)
pub fn pgbouncer_config(input: &PgbouncerInput) -> Result<(String, String), PgbouncerError> {
    let env = input.env;
    let get = |k: &str, default: &str| {
        env.get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let user = env
        .get("PGUSER")
        .filter(|v| !v.is_empty())
        .ok_or(PgbouncerError::Missing("PGUSER"))?;
    let password = env
        .get("PGPASSWORD")
        .ok_or(PgbouncerError::Missing("PGPASSWORD"))?;
    let schema = get("PGSCHEMA", "pooler");
    let port = get("PGPORT", "5432");
    let ini = format!(
        "[databases]\n\
         * = host={host} port={port} auth_user={user}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = {ip}\n\
         listen_port = {listen_port}\n\
         unix_socket_dir = {socket_dir}\n\
         pool_mode = {mode}\n\
         auth_type = md5\n\
         auth_file = {userlist}\n\
         auth_user = {user}\n\
         auth_query = SELECT * FROM {schema}.user_lookup($1)\n\
         admin_users = {user}\n\
         stats_users = {user}\n\
         default_pool_size = {default_size}\n\
         min_pool_size = {min_size}\n\
         reserve_pool_size = {reserve_size}\n\
         max_client_conn = {max_client}\n\
         max_db_connections = {max_db}\n\
         server_tls_sslmode = prefer\n\
         ignore_startup_parameters = extra_float_digits,options\n",
        host = input.upstream_host,
        ip = input.pod_ip,
        listen_port = get("CONNECTION_POOLER_PORT", "5432"),
        socket_dir = input.socket_dir.display(),
        mode = get("CONNECTION_POOLER_MODE", "transaction"),
        userlist = input.run_dir.join("userlist.txt").display(),
        default_size = get("CONNECTION_POOLER_DEFAULT_SIZE", "20"),
        min_size = get("CONNECTION_POOLER_MIN_SIZE", "0"),
        reserve_size = get("CONNECTION_POOLER_RESERVE_SIZE", "0"),
        max_client = get("CONNECTION_POOLER_MAX_CLIENT_CONN", "10000"),
        max_db = get("CONNECTION_POOLER_MAX_DB_CONN", "60"),
    );
    let userlist = format!("{} {}\n", quote(user), quote(password));
    Ok((ini, userlist))
}

/// pgbouncer's userlist quoting: double quotes, inner quotes doubled.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_follows_pooler_environment() {
        let env: BTreeMap<String, String> = [
            ("PGUSER", "pooler"),
            ("PGPASSWORD", "p\"w"),
            ("PGSCHEMA", "pooler"),
            ("CONNECTION_POOLER_MODE", "session"),
            ("CONNECTION_POOLER_DEFAULT_SIZE", "7"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (ini, users) = pgbouncer_config(&PgbouncerInput {
            env: &env,
            pod_ip: Ipv4Addr::new(127, 1, 0, 9),
            upstream_host: "127.1.0.3",
            run_dir: Path::new("/run/p"),
            socket_dir: Path::new("/tmp/s"),
        })
        .unwrap();
        for line in [
            "* = host=127.1.0.3 port=5432 auth_user=pooler",
            "listen_addr = 127.1.0.9",
            "listen_port = 5432",
            "pool_mode = session",
            "default_pool_size = 7",
            "auth_query = SELECT * FROM pooler.user_lookup($1)",
            "auth_file = /run/p/userlist.txt",
        ] {
            assert!(ini.lines().any(|l| l == line), "missing {line:?} in\n{ini}");
        }
        assert_eq!(users, "\"pooler\" \"p\"\"w\"\n");
    }

    #[test]
    fn user_is_required() {
        let env = BTreeMap::new();
        let input = PgbouncerInput {
            env: &env,
            pod_ip: Ipv4Addr::LOCALHOST,
            upstream_host: "h",
            run_dir: Path::new("/"),
            socket_dir: Path::new("/"),
        };
        assert_eq!(
            pgbouncer_config(&input).unwrap_err(),
            PgbouncerError::Missing("PGUSER")
        );
    }
}
