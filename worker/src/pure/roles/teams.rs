//! Human users from Zalando's teams API: the members of the team owning a cluster (and of
//! the configured superuser teams) become LOGIN roles without a password, members of
//! `pam_role_name` (Spilo's PAM/OAuth2 authentication checks their token).
//!
//! Behaviour follows Zalando's `pkg/util/teams/teams.go` (`TeamInfo`), and
//! `pkg/cluster/cluster.go` / `util.go` (`initHumanUsers`, `initTeamMembers`,
//! `getTeamMembers`, `getOAuthToken`):
//!
//! * The client asks `GET {teams_api_url}/teams/{team}` (trailing `/` of the URL trimmed)
//!   with `Authorization: Bearer <token>`; the answer is a JSON object whose `member` list
//!   holds the user names (Zalando's `Team` type; other fields are ignored). Anything but
//!   200 is an error carrying the response's `error` field when it has one, except 404:
//!   an unknown team has no members (Zalando logs a warning and goes on).
//! * The token comes from the Secret `oauth_token_secret_name`: `read-only-token-type`
//!   must be `Bearer`, `read-only-token-secret` is the token.
//! * Teams asked: those of `postgres_superuser_teams`, then the cluster's own team unless
//!   it is one of them ([`teams_to_query`]); none when `enable_teams_api` is off.
//! * Each member becomes a LOGIN role in `pam_role_name`, with `team_api_role_configuration`
//!   as its settings; SUPERUSER for superuser teams, and for the cluster's own team when
//!   `enable_team_superuser`; otherwise a member of `team_admin_role` (when set).
//! * A member of several teams gets the role of the team asked last (Zalando resolves a
//!   clash of two team roles in favour of the newer one).
//! * `enable_team_member_deprecation`: roles of former members are renamed with
//!   `role_deletion_suffix` and lose LOGIN; a returning member's role is renamed back
//!   ([`deprecated_members`]).
//!
//! Differences from Zalando, all lenient: a bare JSON list of names and a `members` list
//! (when `member` is absent) are read as members too; the token type and token are
//! trimmed of surrounding whitespace (a Secret written with `echo` ends in a newline); an
//! empty token is an error rather than an empty bearer; an empty `pam_role_name` or
//! `team_admin_role` adds no membership; a team id is percent-encoded into the URL. The
//! PostgresTeam custom resource (additional teams and members) is not supported yet.
//! Reserved names (system and `protected_role_names`) are refused where all roles meet
//! (`desired`), not here.
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use pgop_common::config::OperatorConfig;

use super::current::Current;
use super::desired::Desired;
use super::diff::Statement;
use super::{Attribute, Origin, RoleFlags, RoleSpec};

/// The key of the token type (must be `Bearer`) in the OAuth token Secret.
pub const TOKEN_TYPE_KEY: &str = "read-only-token-type";
/// The key of the token in the OAuth token Secret.
pub const TOKEN_SECRET_KEY: &str = "read-only-token-secret";
/// PostgreSQL's identifier limit: a longer name would be truncated by a rename.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Why team members could not be read. No variant holds the token.
#[derive(Debug, thiserror::Error)]
pub enum TeamsError {
    #[error("no team id to ask the teams API about")]
    NoTeam,
    #[error("teams_api_url {url:?} is not usable: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("could not query the teams API at {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("the teams API at {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error(
        "teams API query {url} failed with status code {status}{}",
        message_suffix(message)
    )]
    Status {
        url: String,
        status: u16,
        /// The `error` field of the answer, when it has one.
        message: Option<String>,
    },
    #[error("could not parse the teams API answer from {url}: {reason}")]
    Parse { url: String, reason: String },
    #[error("the OAuth token secret's {TOKEN_TYPE_KEY} is not \"Bearer\"")]
    WrongTokenType,
    #[error("the OAuth token secret has no {TOKEN_SECRET_KEY}")]
    MissingToken,
}

fn message_suffix(message: &Option<String>) -> String {
    message
        .as_ref()
        .map(|m| format!(" and message: {m:?}"))
        .unwrap_or_default()
}

/// A team as the teams API describes it (the fields pgop uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Team {
    pub id: Option<String>,
    pub members: Vec<String>,
}

pub(crate) fn parse_team(body: &[u8]) -> Result<Team, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let names = |list: &serde_json::Value, what: &str| -> Result<Vec<String>, String> {
        let items = list
            .as_array()
            .ok_or_else(|| format!("{what} is not a list"))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{what} holds something other than a name"))
            })
            .collect()
    };
    match &value {
        serde_json::Value::Array(_) => Ok(Team {
            id: None,
            members: names(&value, "the answer")?,
        }),
        serde_json::Value::Object(fields) => {
            let present = |key: &str| fields.get(key).filter(|v| !v.is_null());
            let members = match (present("member"), present("members")) {
                (Some(list), _) => names(list, "member")?,
                (None, Some(list)) => names(list, "members")?,
                (None, None) => Vec::new(),
            };
            Ok(Team {
                id: fields
                    .get("id")
                    .and_then(|v| v.as_str())
                    .map(str::to_string),
                members,
            })
        }
        _ => Err("expected a JSON object with a \"member\" list".into()),
    }
}

/// The bearer token from the data of the `oauth_token_secret_name` Secret.
pub fn token_from_secret(data: &BTreeMap<String, String>) -> Result<String, TeamsError> {
    let kind = data.get(TOKEN_TYPE_KEY).map(|t| t.trim());
    if kind != Some("Bearer") {
        return Err(TeamsError::WrongTokenType);
    }
    data.get(TOKEN_SECRET_KEY)
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or(TeamsError::MissingToken)
}

/// The teams whose members get roles on a cluster of `cluster_team`, in the order Zalando
/// asks them (a later team's role wins for a member of several): the superuser teams, then
/// the cluster's team unless it is one of them. Empty when `enable_teams_api` is off.
pub fn teams_to_query(cluster_team: &str, config: &OperatorConfig) -> Vec<String> {
    if !config.enable_teams_api {
        return Vec::new();
    }
    let mut teams: Vec<String> = Vec::new();
    for team in &config.postgres_superuser_teams {
        if !team.is_empty() && !teams.contains(team) {
            teams.push(team.clone());
        }
    }
    if !cluster_team.is_empty() && !teams.iter().any(|t| t == cluster_team) {
        teams.push(cluster_team.to_string());
    }
    teams
}

#[cfg(test)]
/// The roles of the members of `team_id`, taken to be the team owning the cluster (or a
/// superuser team); see [`team_roles_for`].
pub fn team_roles(members: &[String], team_id: &str, config: &OperatorConfig) -> Vec<RoleSpec> {
    team_roles_for(members, team_id, team_id, config)
}

/// The roles of the members of `team_id` on a cluster owned by `cluster_team`: LOGIN
/// without password, member of `pam_role_name`, `team_api_role_configuration` as settings;
/// SUPERUSER when the team is in `postgres_superuser_teams`, or is the cluster's team and
/// `enable_team_superuser` is on; otherwise a member of `team_admin_role` (when set).
pub fn team_roles_for(
    members: &[String],
    team_id: &str,
    cluster_team: &str,
    config: &OperatorConfig,
) -> Vec<RoleSpec> {
    let superuser = (config.enable_team_superuser && team_id == cluster_team)
        || config.postgres_superuser_teams.iter().any(|t| t == team_id);
    let mut member_of = BTreeSet::new();
    if !config.pam_role_name.is_empty() {
        member_of.insert(config.pam_role_name.clone());
    }
    if !superuser && !config.team_admin_role.is_empty() {
        member_of.insert(config.team_admin_role.clone());
    }
    let flags = RoleFlags {
        superuser,
        ..RoleFlags::login()
    };
    let mut seen = BTreeSet::new();
    members
        .iter()
        .filter(|name| !name.is_empty() && seen.insert(name.as_str()))
        .map(|name| RoleSpec {
            name: name.clone(),
            flags: flags.clone(),
            password: None,
            member_of: member_of.clone(),
            parameters: config.team_api_role_configuration.clone(),
            origin: Origin::Team,
        })
        .collect()
}

/// The roles of all teams asked for a cluster (`(team, members)` in [`teams_to_query`]
/// order), one per name: a member of several teams gets the role of the last, as in
/// Zalando. Sorted by name.
pub fn human_roles(
    teams: &[(String, Vec<String>)],
    cluster_team: &str,
    config: &OperatorConfig,
) -> Vec<RoleSpec> {
    let mut by_name = BTreeMap::new();
    for (team, members) in teams {
        for role in team_roles_for(members, team, cluster_team, config) {
            by_name.insert(role.name.clone(), role);
        }
    }
    by_name.into_values().collect()
}

/// A rename of a team member's role (`ALTER ROLE from RENAME TO to`), with the LOGIN it
/// gets: `false` for a former member (`NOLOGIN` before the rename), `true` for one who is
/// back (`LOGIN` after the rename).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRename {
    pub from: String,
    pub to: String,
    pub login: bool,
}

/// With `enable_team_member_deprecation`, the renames Zalando's role sync makes:
///
/// * a former member (`former_members`: team member roles pgop synced before) who is no
///   member now (`members`) and whose role exists (`existing_roles`: roles in the
///   database) gets `<name><role_deletion_suffix>` and NOLOGIN, unless that name is taken
///   (or too long for PostgreSQL);
/// * a member whose role does not exist but `<name><role_deletion_suffix>` does gets it
///   back, with LOGIN.
///
/// Names another origin still wants must not be in `former_members`. Empty when the
/// option is off or the suffix is empty. Sorted as: deprecations, then restorations, each
/// by name.
pub fn deprecated_members(
    former_members: &BTreeSet<String>,
    members: &BTreeSet<String>,
    existing_roles: &BTreeSet<String>,
    config: &OperatorConfig,
) -> Vec<MemberRename> {
    let suffix = config.role_deletion_suffix.as_str();
    if !config.enable_team_member_deprecation || suffix.is_empty() {
        return Vec::new();
    }
    let mut renames = Vec::new();
    for name in former_members.difference(members) {
        let deleted = format!("{name}{suffix}");
        if name.ends_with(suffix)
            || !existing_roles.contains(name)
            || existing_roles.contains(&deleted)
            || deleted.len() > MAX_IDENTIFIER_BYTES
        {
            continue;
        }
        renames.push(MemberRename {
            from: name.clone(),
            to: deleted,
            login: false,
        });
    }
    for name in members {
        let deleted = format!("{name}{suffix}");
        if !existing_roles.contains(name) && existing_roles.contains(&deleted) {
            renames.push(MemberRename {
                from: deleted,
                to: name.clone(),
                login: true,
            });
        }
    }
    renames
}

/// The statements of `enable_team_member_deprecation` for a sync, and `current` updated as
/// if they had run (so that the diff that follows sees the renamed roles). Former members
/// are read from the server: LOGIN roles in `pam_role_name` that no origin wants any more;
/// members are the desired team roles. Call it only when the teams API answered: a failed
/// request would otherwise look like everyone having left.
pub fn member_renames(
    current: &mut Current,
    desired: &Desired,
    config: &OperatorConfig,
) -> Vec<Statement> {
    if config.pam_role_name.is_empty() {
        return Vec::new();
    }
    let members: BTreeSet<String> = desired
        .roles
        .values()
        .filter(|r| r.origin == Origin::Team)
        .map(|r| r.name.clone())
        .collect();
    let former: BTreeSet<String> = current
        .roles
        .values()
        .filter(|r| {
            r.flags.login
                && r.member_of.contains(&config.pam_role_name)
                && !desired.roles.contains_key(&r.name)
        })
        .map(|r| r.name.clone())
        .collect();
    let existing: BTreeSet<String> = current.roles.keys().cloned().collect();
    let mut statements = Vec::new();
    for rename in deprecated_members(&former, &members, &existing, config) {
        let Some(mut role) = current.roles.remove(&rename.from) else {
            continue;
        };
        if !rename.login && role.flags.login {
            statements.push(Statement::AlterRoleFlags {
                name: rename.from.clone(),
                changes: vec![(Attribute::Login, false)],
            });
            role.flags.login = false;
        }
        statements.push(Statement::RenameRole {
            from: rename.from.clone(),
            to: rename.to.clone(),
        });
        role.name = rename.to.clone();
        current.roles.insert(rename.to, role);
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    // ---- token ----------------------------------------------------------------------

    #[test]
    fn token_from_the_oauth_secret() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // Zalando's manifests/fake-teams-api.yaml, decoded.
        let fake = data(&[
            ("read-only-token-secret", "testtoken"),
            ("read-only-token-type", "Bearer"),
        ]);
        assert_eq!(token_from_secret(&fake).unwrap(), "testtoken");
        let echoed = data(&[
            ("read-only-token-secret", "testtoken\n"),
            ("read-only-token-type", "Bearer\n"),
        ]);
        assert_eq!(token_from_secret(&echoed).unwrap(), "testtoken");
        for (pairs, wrong_type) in [
            (vec![("read-only-token-secret", "testtoken")], true),
            (
                vec![
                    ("read-only-token-secret", "testtoken"),
                    ("read-only-token-type", "bearer"),
                ],
                true,
            ),
            (
                vec![
                    ("read-only-token-secret", "testtoken"),
                    ("read-only-token-type", "Basic"),
                ],
                true,
            ),
            (vec![("read-only-token-type", "Bearer")], false),
            (
                vec![
                    ("read-only-token-secret", " "),
                    ("read-only-token-type", "Bearer"),
                ],
                false,
            ),
        ] {
            let error = token_from_secret(&data(&pairs)).unwrap_err();
            if wrong_type {
                assert!(matches!(error, TeamsError::WrongTokenType), "{pairs:?}");
            } else {
                assert!(matches!(error, TeamsError::MissingToken), "{pairs:?}");
            }
            assert!(!error.to_string().contains("testtoken"));
        }
    }

    // ---- roles ----------------------------------------------------------------------

    fn team_role(name: &str, superuser: bool, member_of: &[&str]) -> RoleSpec {
        RoleSpec {
            name: name.into(),
            flags: RoleFlags {
                superuser,
                ..RoleFlags::login()
            },
            password: None,
            member_of: set(member_of),
            parameters: [("log_statement".to_string(), "all".to_string())].into(),
            origin: Origin::Team,
        }
    }

    #[test]
    fn team_roles_for_configuration_variants() {
        let members = strings(&["alice", "bob", "alice", ""]);
        let defaults = OperatorConfig::default();
        type Case = (OperatorConfig, &'static str, Vec<RoleSpec>);
        let cases: Vec<Case> = vec![
            // Defaults: LOGIN, zalandos and admin, log_statement=all.
            (
                defaults.clone(),
                "acid",
                vec![
                    team_role("alice", false, &["zalandos", "admin"]),
                    team_role("bob", false, &["zalandos", "admin"]),
                ],
            ),
            // enable_team_superuser: superusers of their own team's cluster, no admin role.
            (
                OperatorConfig {
                    enable_team_superuser: true,
                    ..defaults.clone()
                },
                "acid",
                vec![
                    team_role("alice", true, &["zalandos"]),
                    team_role("bob", true, &["zalandos"]),
                ],
            ),
            // A postgres_superuser_teams team.
            (
                OperatorConfig {
                    postgres_superuser_teams: strings(&["acid"]),
                    ..defaults.clone()
                },
                "acid",
                vec![
                    team_role("alice", true, &["zalandos"]),
                    team_role("bob", true, &["zalandos"]),
                ],
            ),
            // No admin role, another PAM role, other settings.
            (
                OperatorConfig {
                    team_admin_role: String::new(),
                    pam_role_name: "humans".into(),
                    team_api_role_configuration: [
                        ("log_statement".to_string(), "ddl".to_string()),
                        ("search_path".to_string(), "'a,b'".to_string()),
                    ]
                    .into(),
                    ..defaults.clone()
                },
                "acid",
                vec![
                    RoleSpec {
                        parameters: [
                            ("log_statement".to_string(), "ddl".to_string()),
                            ("search_path".to_string(), "'a,b'".to_string()),
                        ]
                        .into(),
                        ..team_role("alice", false, &["humans"])
                    },
                    RoleSpec {
                        parameters: [
                            ("log_statement".to_string(), "ddl".to_string()),
                            ("search_path".to_string(), "'a,b'".to_string()),
                        ]
                        .into(),
                        ..team_role("bob", false, &["humans"])
                    },
                ],
            ),
            // No PAM role and no settings.
            (
                OperatorConfig {
                    pam_role_name: String::new(),
                    team_api_role_configuration: BTreeMap::new(),
                    ..defaults.clone()
                },
                "acid",
                vec![
                    RoleSpec {
                        parameters: BTreeMap::new(),
                        ..team_role("alice", false, &["admin"])
                    },
                    RoleSpec {
                        parameters: BTreeMap::new(),
                        ..team_role("bob", false, &["admin"])
                    },
                ],
            ),
        ];
        for (config, team, expected) in cases {
            assert_eq!(team_roles(&members, team, &config), expected, "{config:?}");
        }
        assert_eq!(team_roles(&[], "acid", &defaults), vec![]);
    }

    #[test]
    fn team_superuser_applies_to_the_clusters_own_team_only() {
        let config = OperatorConfig {
            enable_team_superuser: true,
            postgres_superuser_teams: strings(&["dba"]),
            ..OperatorConfig::default()
        };
        let members = strings(&["alice"]);
        assert_eq!(
            team_roles_for(&members, "acid", "acid", &config),
            vec![team_role("alice", true, &["zalandos"])]
        );
        assert_eq!(
            team_roles_for(&members, "other", "acid", &config),
            vec![team_role("alice", false, &["zalandos", "admin"])]
        );
        assert_eq!(
            team_roles_for(&members, "dba", "acid", &config),
            vec![team_role("alice", true, &["zalandos"])]
        );
    }

    #[test]
    fn teams_asked_for_a_cluster() {
        let config = |enabled: bool, superuser_teams: &[&str]| OperatorConfig {
            enable_teams_api: enabled,
            postgres_superuser_teams: strings(superuser_teams),
            ..OperatorConfig::default()
        };
        let cases: Vec<(OperatorConfig, &str, Vec<&str>)> = vec![
            (config(true, &[]), "acid", vec!["acid"]),
            (config(false, &["dba"]), "acid", vec![]),
            (
                config(true, &["dba", "", "dba", "ops"]),
                "acid",
                vec!["dba", "ops", "acid"],
            ),
            (config(true, &["dba", "acid"]), "acid", vec!["dba", "acid"]),
            (config(true, &["dba"]), "", vec!["dba"]),
        ];
        for (config, team, expected) in cases {
            assert_eq!(
                teams_to_query(team, &config),
                strings(&expected),
                "{config:?}"
            );
        }
    }

    #[test]
    fn human_roles_keep_the_last_teams_role() {
        let config = OperatorConfig {
            postgres_superuser_teams: strings(&["dba"]),
            ..OperatorConfig::default()
        };
        let teams = vec![
            ("dba".to_string(), strings(&["carol", "alice"])),
            ("acid".to_string(), strings(&["alice", "bob"])),
        ];
        assert_eq!(
            human_roles(&teams, "acid", &config),
            vec![
                team_role("alice", false, &["zalandos", "admin"]),
                team_role("bob", false, &["zalandos", "admin"]),
                team_role("carol", true, &["zalandos"]),
            ]
        );
    }

    #[test]
    fn member_deprecation() {
        let on = OperatorConfig {
            enable_team_member_deprecation: true,
            ..OperatorConfig::default()
        };
        let rename = |from: &str, to: &str, login: bool| MemberRename {
            from: from.into(),
            to: to.into(),
            login,
        };
        let long = "x".repeat(60);
        type Case = (
            OperatorConfig,
            BTreeSet<String>,
            BTreeSet<String>,
            BTreeSet<String>,
            Vec<MemberRename>,
        );
        let cases: Vec<Case> = vec![
            // Off by default.
            (
                OperatorConfig::default(),
                set(&["alice", "bob"]),
                set(&["alice"]),
                set(&["alice", "bob"]),
                vec![],
            ),
            (
                on.clone(),
                set(&["alice", "bob", "carol", "dave", &long]),
                set(&["alice", "erin", "frank"]),
                // carol has no role any more; dave_deleted is taken; frank is back.
                set(&[
                    "alice",
                    "bob",
                    "dave",
                    "dave_deleted",
                    "frank_deleted",
                    &long,
                    "erin_deleted",
                    "erin",
                ]),
                vec![
                    rename("bob", "bob_deleted", false),
                    rename("frank_deleted", "frank", true),
                ],
            ),
            (
                OperatorConfig {
                    role_deletion_suffix: String::new(),
                    ..on.clone()
                },
                set(&["bob"]),
                set(&[]),
                set(&["bob"]),
                vec![],
            ),
        ];
        for (config, former, members, existing, expected) in cases {
            assert_eq!(
                deprecated_members(&former, &members, &existing, &config),
                expected
            );
        }
    }

    #[test]
    fn former_members_are_set_aside_and_returning_ones_restored() {
        use crate::pure::roles::current::CurrentRole;
        let config = OperatorConfig {
            enable_team_member_deprecation: true,
            pam_role_name: "zalandos".into(),
            ..OperatorConfig::default()
        };
        let human = |name: &str, login: bool| {
            let flags = if login {
                RoleFlags::login()
            } else {
                RoleFlags::nologin()
            };
            CurrentRole::new(
                name,
                flags,
                None,
                [String::from("zalandos")],
                BTreeMap::new(),
            )
        };
        let mut current = Current::new(
            [
                human("alice", true),
                human("bob", true),
                human("carol_deleted", false),
                // A LOGIN role outside pam_role_name is nobody's former member.
                CurrentRole::new(
                    "app",
                    RoleFlags::login(),
                    None,
                    Vec::<String>::new(),
                    BTreeMap::new(),
                ),
                // Still wanted, by another origin: left alone.
                human("dave", true),
            ],
            Vec::<(String, String)>::new(),
        );
        let mut desired = Desired::default();
        for (name, origin) in [
            ("alice", Origin::Team),
            ("carol", Origin::Team),
            ("dave", Origin::Manifest),
        ] {
            desired.roles.insert(
                name.into(),
                RoleSpec {
                    name: name.into(),
                    flags: RoleFlags::login(),
                    password: None,
                    member_of: BTreeSet::new(),
                    parameters: BTreeMap::new(),
                    origin,
                },
            );
        }
        let statements = member_renames(&mut current, &desired, &config);
        assert_eq!(
            statements,
            vec![
                Statement::AlterRoleFlags {
                    name: "bob".into(),
                    changes: vec![(Attribute::Login, false)]
                },
                Statement::RenameRole {
                    from: "bob".into(),
                    to: "bob_deleted".into()
                },
                Statement::RenameRole {
                    from: "carol_deleted".into(),
                    to: "carol".into()
                },
            ]
        );
        let names: Vec<&str> = current.roles.keys().map(String::as_str).collect();
        assert_eq!(names, ["alice", "app", "bob_deleted", "carol", "dave"]);
        assert!(!current.roles["bob_deleted"].flags.login);
        // The model after the renames: the next pass finds nothing to do.
        assert!(member_renames(&mut current, &desired, &config).is_empty());
        let off = OperatorConfig {
            enable_team_member_deprecation: false,
            ..config
        };
        let mut untouched = Current::new([human("bob", true)], Vec::<(String, String)>::new());
        assert!(member_renames(&mut untouched, &desired, &off).is_empty());
    }
}
