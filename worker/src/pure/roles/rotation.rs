//! Password rotation of login roles (Zalando's `enable_password_rotation`,
//! `usersWithSecretRotation`, `usersWithInPlaceSecretRotation`, `usersIgnoringSecretRotation`),
//! as pure decisions: which mode a role rotates in, what its credentials Secret should hold
//! now, and which dated roles have outlived their retention.
//!
//! A rotated Secret names either the role itself (in-place rotation: only the password
//! changes) or a dated role `<user><yymmdd>` (created with LOGIN as a member of `<user>`, so
//! it holds the user's privileges while the previous dated role keeps working until it is
//! dropped after the retention period).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Days, Duration, NaiveDate, SecondsFormat, Utc};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;

use crate::pure::roles::desired::Desired;
use crate::pure::roles::{Origin, RoleFlags, RoleSpec};

/// The Secret key holding the next rotation date (RFC 3339).
pub const NEXT_ROTATION_KEY: &str = "nextRotation";
/// The Secret key holding the role name to log in with.
pub const USERNAME_KEY: &str = "username";
/// The Secret key holding the password.
pub const PASSWORD_KEY: &str = "password";
/// The date suffix of a dated role: user `foo` rotated on 2026-11-21 logs in as `foo261121`.
pub const DATED_NAME_FORMAT: &str = "%y%m%d";

/// The content of a role's credentials Secret. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretCredentials {
    pub username: String,
    pub password: String,
    /// The next rotation date (RFC 3339); None when the role is not rotated.
    pub next_rotation: Option<String>,
}

impl std::fmt::Debug for SecretCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("next_rotation", &self.next_rotation)
            .finish()
    }
}

impl SecretCredentials {
    /// Reads the (decoded) Secret data; None without a username or a password. An empty
    /// `nextRotation` (what Zalando writes when rotation is off) counts as absent.
    pub fn from_data(data: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            username: data.get(USERNAME_KEY)?.clone(),
            password: data.get(PASSWORD_KEY)?.clone(),
            next_rotation: data
                .get(NEXT_ROTATION_KEY)
                .filter(|value| !value.is_empty())
                .cloned(),
        })
    }

    /// The (decoded) Secret data; `nextRotation` only when there is one (Zalando writes an
    /// empty value when rotation is off, pgop drops the key).
    pub fn to_data(&self) -> BTreeMap<String, String> {
        let mut data = BTreeMap::from([
            (USERNAME_KEY.to_string(), self.username.clone()),
            (PASSWORD_KEY.to_string(), self.password.clone()),
        ]);
        if let Some(next) = &self.next_rotation {
            data.insert(NEXT_ROTATION_KEY.to_string(), next.clone());
        }
        data
    }
}

/// How a role's password is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never: the Secret names the role itself and keeps its password.
    Off,
    /// Each rotation creates a dated role `<user><yymmdd>` with a new password.
    Dated,
    /// Each rotation changes the role's own password.
    InPlace,
}

/// The rotation mode of `user`, and a problem to show when the manifest asks for a rotation
/// pgop does not do. The superuser and every role of a standby cluster are never rotated;
/// `usersIgnoringSecretRotation` wins over everything; the manifest lists apply even with
/// `enable_password_rotation` off; the global option covers manifest and prepared-database
/// roles that do not own a database.
pub fn mode(
    user: &str,
    origin: Origin,
    is_database_owner: bool,
    pg: &Postgresql,
    config: &OperatorConfig,
) -> (Mode, Option<String>) {
    let spec = &pg.spec;
    let listed = |list: &[String]| list.iter().any(|u| u == user);
    let in_place = listed(&spec.users_with_in_place_secret_rotation);
    let dated = listed(&spec.users_with_secret_rotation);

    if user == config.super_username {
        let problem = (in_place || dated).then(|| {
            "pgop does not rotate the superuser's password (the pods would need a restart)"
                .to_string()
        });
        return (Mode::Off, problem);
    }
    if spec.standby.is_some() || listed(&spec.users_ignoring_secret_rotation) {
        return (Mode::Off, None);
    }
    if in_place || dated {
        let refusal = match origin {
            Origin::System => Some(
                "pgop does not rotate the password of a system role (the pods would need a restart)",
            ),
            Origin::Infrastructure => Some(
                "pgop does not rotate the password of an infrastructure role (it comes from the infrastructure role's own Secret)",
            ),
            Origin::Team => {
                Some("pgop does not rotate team roles (they log in without a password)")
            }
            Origin::Manifest | Origin::PreparedDatabase => None,
        };
        if let Some(reason) = refusal {
            return (Mode::Off, Some(reason.to_string()));
        }
        return (if in_place { Mode::InPlace } else { Mode::Dated }, None);
    }
    let global = config.enable_password_rotation
        && matches!(origin, Origin::Manifest | Origin::PreparedDatabase)
        && !is_database_owner;
    (if global { Mode::Dated } else { Mode::Off }, None)
}

/// What a role's Secret should hold after this sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub credentials: SecretCredentials,
    /// The Secret must be written (its content changed).
    pub write: bool,
    /// Why it changed, for logs and Events; never contains a password.
    pub reason: Option<String>,
    /// Dated roles of this user may have outlived their retention: look for them
    /// (see [`expired_rotation_roles`]).
    pub check_retention: bool,
}

/// RFC 3339 in UTC with seconds precision (`2026-11-21T10:00:00Z`).
fn format_date(date: DateTime<Utc>) -> String {
    date.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The Secret content of `user` at `now`, from the `stored` one; `new_password` is called
/// only when a new password is needed. `interval_days` 0 counts as 1 day.
pub fn decide(
    user: &str,
    mode: Mode,
    stored: &SecretCredentials,
    now: DateTime<Utc>,
    interval_days: u32,
    new_password: &mut dyn FnMut() -> String,
) -> Decision {
    let unchanged = |credentials: SecretCredentials| Decision {
        credentials,
        write: false,
        reason: None,
        check_retention: false,
    };

    if mode == Mode::Off {
        if stored.username == user {
            return unchanged(stored.clone());
        }
        return Decision {
            credentials: SecretCredentials {
                username: user.to_string(),
                password: new_password(),
                next_rotation: None,
            },
            write: true,
            reason: Some(format!(
                "password rotation is off: the secret named role {:?}, reset to {user:?} with a new password",
                stored.username
            )),
            check_retention: true,
        };
    }

    let interval = Duration::days(i64::from(interval_days.max(1)));
    let next = now + interval;
    let scheduled = stored
        .next_rotation
        .as_deref()
        .and_then(|date| DateTime::parse_from_rfc3339(date).ok())
        .map(|date| date.with_timezone(&Utc));

    let expected = match mode {
        Mode::Dated => format!("{user}{}", now.format(DATED_NAME_FORMAT)),
        _ => user.to_string(),
    };
    // The Secret names a role this mode never writes (a dated role while rotating in
    // place, or something else entirely): rotate at once rather than keep it.
    let switched = stored.username != user
        && (mode == Mode::InPlace || dated_role_date(user, &stored.username).is_none());

    let rescheduled = |date: DateTime<Utc>, reason: String| Decision {
        credentials: SecretCredentials {
            next_rotation: Some(format_date(date)),
            ..stored.clone()
        },
        write: true,
        reason: Some(reason),
        check_retention: false,
    };

    let due = match scheduled {
        _ if switched => true,
        None => {
            return rescheduled(
                next,
                format!("first rotation scheduled for {}", format_date(next)),
            )
        }
        // The interval was shortened: bring the date forward (and store it, or the capped
        // date would slide forward with every sync and never arrive).
        Some(date) if date > next => {
            return rescheduled(
                next,
                format!(
                    "rotation interval shortened, next rotation brought forward to {}",
                    format_date(next)
                ),
            )
        }
        Some(date) => now > date,
    };
    if !due {
        return unchanged(stored.clone());
    }

    let reason = if switched {
        format!(
            "the secret named role {:?}: password rotated into role {expected:?}, next rotation {}",
            stored.username,
            format_date(next)
        )
    } else {
        format!(
            "password rotated into role {expected:?}, next rotation {}",
            format_date(next)
        )
    };
    Decision {
        credentials: SecretCredentials {
            username: expected,
            password: new_password(),
            next_rotation: Some(format_date(next)),
        },
        write: true,
        reason: Some(reason),
        check_retention: mode == Mode::Dated || switched,
    }
}

/// The rotation date of `role` when it is a dated role of `user`: exactly `user` followed by
/// six digits forming a valid `%y%m%d` date.
pub fn dated_role_date(user: &str, role: &str) -> Option<NaiveDate> {
    let suffix = role.strip_prefix(user)?;
    if suffix.len() != 6 || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(suffix, DATED_NAME_FORMAT).ok()
}

/// The dated roles of `user` to drop: members of `user` (each role comes with the roles it is
/// a member of) whose date plus `retention_days` is before `today`, never `in_use` (the role
/// the Secret names); sorted.
pub fn expired_rotation_roles<'a>(
    user: &str,
    roles: impl IntoIterator<Item = (&'a str, &'a BTreeSet<String>)>,
    in_use: &str,
    today: NaiveDate,
    retention_days: u32,
) -> Vec<String> {
    let expired: BTreeSet<String> = roles
        .into_iter()
        .filter(|(role, member_of)| *role != in_use && member_of.contains(user))
        .filter(|(role, _)| {
            dated_role_date(user, role)
                .and_then(|date| date.checked_add_days(Days::new(u64::from(retention_days))))
                .is_some_and(|until| until < today)
        })
        .map(|(role, _)| role.to_string())
        .collect();
    expired.into_iter().collect()
}

/// The dated role the Secret names, when it is not `user` itself: to be created with LOGIN
/// and the Secret's password, as a member of `user`.
pub fn rotated_role_name<'a>(user: &str, credentials: &'a SecretCredentials) -> Option<&'a str> {
    (credentials.username != user).then_some(credentials.username.as_str())
}

/// Whether `role` owns a database in `desired` (Zalando's `IsDbOwner`): the owner of a
/// database, or a prepared database's `…_owner` role or `…_owner_user`. The global option
/// leaves their passwords alone.
pub fn is_database_owner(desired: &Desired, role: &str) -> bool {
    desired.databases.values().any(|d| d.owner == role)
        || desired
            .roles
            .get(role)
            .is_some_and(|r| r.origin == Origin::PreparedDatabase && role.contains("_owner"))
}

/// Puts the dated roles of `rotated` (user → the role its Secret names now) into
/// `desired`: each logs in with the Secret's password, is a member of its user and has the
/// user's settings; the user itself keeps its attributes and memberships but its password
/// is no longer managed (clients of the previous credentials keep working until it is
/// rotated again).
pub fn add_rotated_roles(desired: &mut Desired, rotated: &BTreeMap<String, (String, String)>) {
    for (user, (role, password)) in rotated {
        let Some(spec) = desired.roles.get_mut(user) else {
            continue;
        };
        spec.password = None;
        let dated = RoleSpec {
            name: role.clone(),
            flags: RoleFlags {
                login: true,
                ..spec.flags.clone()
            },
            password: Some(password.clone()),
            member_of: BTreeSet::from([user.clone()]),
            parameters: spec.parameters.clone(),
            origin: spec.origin,
        };
        desired.roles.insert(role.clone(), dated);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0).unwrap()
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn creds(username: &str, password: &str, next: Option<&str>) -> SecretCredentials {
        SecretCredentials {
            username: username.to_string(),
            password: password.to_string(),
            next_rotation: next.map(str::to_string),
        }
    }

    fn manifest(extra_spec: &str) -> Postgresql {
        let yaml = format!(
            "apiVersion: acid.zalan.do/v1\nkind: postgresql\nmetadata:\n  name: acid-test\n  namespace: default\nspec:\n  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{extra_spec}"
        );
        serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    #[test]
    fn secret_data_round_trip() {
        let data = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cases: &[(&str, BTreeMap<String, String>, Option<SecretCredentials>)] = &[
            (
                "with next rotation",
                data(&[
                    ("username", "foo261121"),
                    ("password", "pw"),
                    ("nextRotation", "2027-02-19T10:00:00Z"),
                ]),
                Some(creds("foo261121", "pw", Some("2027-02-19T10:00:00Z"))),
            ),
            (
                "empty next rotation counts as none",
                data(&[
                    ("username", "foo"),
                    ("password", "pw"),
                    ("nextRotation", ""),
                ]),
                Some(creds("foo", "pw", None)),
            ),
            (
                "no next rotation",
                data(&[("username", "foo"), ("password", "pw")]),
                Some(creds("foo", "pw", None)),
            ),
            ("no username", data(&[("password", "pw")]), None),
            ("no password", data(&[("username", "foo")]), None),
        ];
        for (name, input, want) in cases {
            assert_eq!(&SecretCredentials::from_data(input), want, "{name}");
        }

        let with = creds("foo", "pw", Some("2027-02-19T10:00:00Z")).to_data();
        assert_eq!(
            with,
            data(&[
                ("username", "foo"),
                ("password", "pw"),
                ("nextRotation", "2027-02-19T10:00:00Z"),
            ])
        );
        let without = creds("foo", "pw", None).to_data();
        assert!(!without.contains_key(NEXT_ROTATION_KEY), "{without:?}");
        assert_eq!(without.len(), 2);
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", creds("foo", "s3cr3t", Some("2027-01-01T00:00:00Z")));
        assert!(
            !shown.contains("s3cr3t") && shown.contains("<redacted>") && shown.contains("foo"),
            "{shown}"
        );
        let decision = Decision {
            credentials: creds("foo", "s3cr3t", None),
            write: true,
            reason: None,
            check_retention: false,
        };
        assert!(!format!("{decision:?}").contains("s3cr3t"));
    }

    /// (case, user, origin, database owner, extra spec, config, mode, problem contains)
    type ModeCase<'a> = (
        &'a str,
        &'a str,
        Origin,
        bool,
        &'a str,
        &'a OperatorConfig,
        Mode,
        Option<&'a str>,
    );

    #[test]
    fn modes() {
        let global = OperatorConfig {
            enable_password_rotation: true,
            ..OperatorConfig::default()
        };
        let off = OperatorConfig::default();
        let lists = "  usersWithSecretRotation: [foo, replicator, infra, team, owner, postgres]\n  usersWithInPlaceSecretRotation: [bar, foo]\n  usersIgnoringSecretRotation: [ignored]\n";
        let cases: &[ModeCase] = &[
            ("listed dated, global off", "foo", Origin::Manifest, false, "  usersWithSecretRotation: [foo]\n", &off, Mode::Dated, None),
            ("in-place list wins over dated list", "foo", Origin::Manifest, false, lists, &off, Mode::InPlace, None),
            ("listed in place", "bar", Origin::PreparedDatabase, false, lists, &off, Mode::InPlace, None),
            ("unlisted, global off", "baz", Origin::Manifest, false, lists, &off, Mode::Off, None),
            ("global on: manifest role", "baz", Origin::Manifest, false, "", &global, Mode::Dated, None),
            ("global on: prepared database role", "db_reader", Origin::PreparedDatabase, false, "", &global, Mode::Dated, None),
            ("global on: database owner excluded", "owner", Origin::Manifest, true, "", &global, Mode::Off, None),
            ("database owner allowed via the list", "owner", Origin::Manifest, true, lists, &off, Mode::Dated, None),
            ("global on: infrastructure role not rotated", "infra", Origin::Infrastructure, false, "", &global, Mode::Off, None),
            ("global on: system role not rotated", "standby", Origin::System, false, "", &global, Mode::Off, None),
            ("ignoring list wins over the lists", "ignored", Origin::Manifest, false, "  usersWithSecretRotation: [ignored]\n  usersWithInPlaceSecretRotation: [ignored]\n  usersIgnoringSecretRotation: [ignored]\n", &global, Mode::Off, None),
            ("ignoring list wins over the global option", "ignored", Origin::Manifest, false, lists, &global, Mode::Off, None),
            ("superuser never, even listed", "postgres", Origin::System, false, lists, &global, Mode::Off, Some("superuser")),
            ("superuser never, unlisted", "postgres", Origin::Manifest, false, "", &global, Mode::Off, None),
            ("standby never, listed", "foo", Origin::Manifest, false, "  standby: {s3_wal_path: \"s3://bucket/wal\"}\n  usersWithSecretRotation: [foo]\n", &off, Mode::Off, None),
            ("standby never, global", "baz", Origin::Manifest, false, "  standby: {standby_host: primary.example}\n", &global, Mode::Off, None),
            ("system role listed", "replicator", Origin::System, false, lists, &off, Mode::Off, Some("system role")),
            ("infrastructure role listed", "infra", Origin::Infrastructure, false, lists, &off, Mode::Off, Some("infrastructure role")),
            ("team role listed", "team", Origin::Team, false, lists, &off, Mode::Off, Some("team roles")),
        ];
        for (name, user, origin, owner, spec, config, want_mode, want_problem) in cases {
            let pg = manifest(spec);
            let (got_mode, problem) = mode(user, *origin, *owner, &pg, config);
            assert_eq!(got_mode, *want_mode, "{name}");
            match (want_problem, &problem) {
                (None, None) => {}
                (Some(part), Some(text)) => assert!(text.contains(part), "{name}: {text}"),
                _ => panic!("{name}: problem {problem:?}, expected {want_problem:?}"),
            }
        }
    }

    struct Case {
        name: &'static str,
        mode: Mode,
        stored: SecretCredentials,
        now: DateTime<Utc>,
        interval: u32,
        want: SecretCredentials,
        write: bool,
        reason: Option<&'static str>,
        check_retention: bool,
    }

    #[test]
    fn decisions() {
        let now = at(2026, 11, 21, 10);
        let cases = vec![
            Case {
                name: "first sync schedules",
                mode: Mode::Dated,
                stored: creds("foo", "old", None),
                now,
                interval: 90,
                want: creds("foo", "old", Some("2027-02-19T10:00:00Z")),
                write: true,
                reason: Some("first rotation scheduled for 2027-02-19T10:00:00Z"),
                check_retention: false,
            },
            Case {
                name: "unparseable date schedules",
                mode: Mode::InPlace,
                stored: creds("foo", "old", Some("next tuesday")),
                now,
                interval: 7,
                want: creds("foo", "old", Some("2026-11-28T10:00:00Z")),
                write: true,
                reason: Some("first rotation scheduled"),
                check_retention: false,
            },
            Case {
                name: "not yet due",
                mode: Mode::Dated,
                stored: creds("foo261001", "old", Some("2026-12-01T00:00:00Z")),
                now,
                interval: 90,
                want: creds("foo261001", "old", Some("2026-12-01T00:00:00Z")),
                write: false,
                reason: None,
                check_retention: false,
            },
            Case {
                name: "exactly on the date is not yet due",
                mode: Mode::Dated,
                stored: creds("foo", "old", Some("2026-11-21T10:00:00Z")),
                now,
                interval: 90,
                want: creds("foo", "old", Some("2026-11-21T10:00:00Z")),
                write: false,
                reason: None,
                check_retention: false,
            },
            Case {
                name: "due: dated name, new password, new date",
                mode: Mode::Dated,
                stored: creds("foo260823", "old", Some("2026-11-21T09:59:59Z")),
                now,
                interval: 90,
                want: creds("foo261121", "pw1", Some("2027-02-19T10:00:00Z")),
                write: true,
                reason: Some(
                    "password rotated into role \"foo261121\", next rotation 2027-02-19T10:00:00Z",
                ),
                check_retention: true,
            },
            Case {
                name: "due with an offset date",
                mode: Mode::Dated,
                stored: creds("foo", "old", Some("2026-11-21T11:00:00+02:00")),
                now,
                interval: 90,
                want: creds("foo261121", "pw1", Some("2027-02-19T10:00:00Z")),
                write: true,
                reason: Some("password rotated"),
                check_retention: true,
            },
            Case {
                name: "in-place keeps the name",
                mode: Mode::InPlace,
                stored: creds("foo", "old", Some("2026-11-20T00:00:00Z")),
                now,
                interval: 30,
                want: creds("foo", "pw1", Some("2026-12-21T10:00:00Z")),
                write: true,
                reason: Some("password rotated into role \"foo\""),
                check_retention: false,
            },
            Case {
                name: "switch dated to in-place rotates at once",
                mode: Mode::InPlace,
                stored: creds("foo261001", "old", Some("2026-12-30T00:00:00Z")),
                now,
                interval: 90,
                want: creds("foo", "pw1", Some("2027-02-19T10:00:00Z")),
                write: true,
                reason: Some("the secret named role \"foo261001\""),
                check_retention: true,
            },
            Case {
                name: "switch dated to in-place without a date rotates at once",
                mode: Mode::InPlace,
                stored: creds("foo261001", "old", None),
                now,
                interval: 90,
                want: creds("foo", "pw1", Some("2027-02-19T10:00:00Z")),
                write: true,
                reason: Some("password rotated into role \"foo\""),
                check_retention: true,
            },
            Case {
                name: "secret naming another role rotates at once",
                mode: Mode::Dated,
                stored: creds("bar", "old", Some("2027-01-01T00:00:00Z")),
                now,
                interval: 90,
                want: creds("foo261121", "pw1", Some("2027-02-19T10:00:00Z")),
                write: true,
                reason: Some("the secret named role \"bar\""),
                check_retention: true,
            },
            Case {
                name: "shortened interval brings the date forward",
                mode: Mode::Dated,
                stored: creds("foo261001", "old", Some("2027-06-01T00:00:00Z")),
                now,
                interval: 7,
                want: creds("foo261001", "old", Some("2026-11-28T10:00:00Z")),
                write: true,
                reason: Some("brought forward to 2026-11-28T10:00:00Z"),
                check_retention: false,
            },
            Case {
                name: "shortened interval then rotates sooner",
                mode: Mode::Dated,
                stored: creds("foo261001", "old", Some("2026-11-28T10:00:00Z")),
                now: at(2026, 11, 28, 11),
                interval: 7,
                want: creds("foo261128", "pw1", Some("2026-12-05T11:00:00Z")),
                write: true,
                reason: Some("password rotated"),
                check_retention: true,
            },
            Case {
                name: "interval 0 counts as one day",
                mode: Mode::InPlace,
                stored: creds("foo", "old", None),
                now,
                interval: 0,
                want: creds("foo", "old", Some("2026-11-22T10:00:00Z")),
                write: true,
                reason: Some("first rotation scheduled"),
                check_retention: false,
            },
            Case {
                name: "switched off resets",
                mode: Mode::Off,
                stored: creds("foo261001", "old", Some("2026-12-30T00:00:00Z")),
                now,
                interval: 90,
                want: creds("foo", "pw1", None),
                write: true,
                reason: Some("password rotation is off"),
                check_retention: true,
            },
            Case {
                name: "off and already the user: unchanged",
                mode: Mode::Off,
                stored: creds("foo", "old", None),
                now,
                interval: 90,
                want: creds("foo", "old", None),
                write: false,
                reason: None,
                check_retention: false,
            },
        ];
        for case in cases {
            let mut calls = 0;
            let mut next_password = || {
                calls += 1;
                format!("pw{calls}")
            };
            let got = decide(
                "foo",
                case.mode,
                &case.stored,
                case.now,
                case.interval,
                &mut next_password,
            );
            let name = case.name;
            assert_eq!(got.credentials, case.want, "{name}");
            assert_eq!(got.write, case.write, "{name}");
            assert_eq!(got.check_retention, case.check_retention, "{name}");
            match (case.reason, &got.reason) {
                (None, None) => {}
                (Some(part), Some(text)) => {
                    assert!(text.contains(part), "{name}: {text}");
                    assert!(
                        !text.contains(&got.credentials.password)
                            && !text.contains(&case.stored.password),
                        "{name}: reason shows a password: {text}"
                    );
                }
                (want, got) => panic!("{name}: reason {got:?}, expected {want:?}"),
            }
            let new_password = got.credentials.password != case.stored.password;
            assert_eq!(calls, usize::from(new_password), "{name}: password calls");
        }
    }

    #[test]
    fn dated_role_dates() {
        let cases: &[(&str, &str, Option<NaiveDate>)] = &[
            ("foo", "foo261121", Some(day(2026, 11, 21))),
            ("foo", "foo000229", Some(day(2000, 2, 29))),
            ("foo", "foo", None),
            ("foo", "foo2611", None),
            ("foo", "foo2611211", None),
            ("foo", "foo261341", None),
            ("foo", "foo260230", None),
            ("foo", "foobar", None),
            ("foo", "foo+61121", None),
            ("foo", "bar261121", None),
            ("fo", "foo261121", None),
        ];
        for (user, role, want) in cases {
            assert_eq!(dated_role_date(user, role), *want, "{user} {role}");
        }
    }

    #[test]
    fn retention() {
        let member = BTreeSet::from(["foo".to_string()]);
        let other = BTreeSet::from(["bar".to_string()]);
        let none = BTreeSet::new();
        let roles: Vec<(&str, &BTreeSet<String>)> = vec![
            ("foo260101", &member), // old: dropped
            ("foo250601", &member), // older: dropped
            ("foo260301", &member), // in use: kept
            ("foo260520", &member), // 05-20 + 180 days = 11-16, before today: dropped
            ("foo260521", &member), // 05-21 + 180 days = 11-17, the day before: dropped
            ("foo260522", &member), // 05-22 + 180 days = 11-18 = today: kept
            ("foo261001", &member), // young: kept
            ("foo250101", &other),  // not a member of foo: kept
            ("foo250102", &none),   // no memberships: kept
            ("foo", &member),       // not dated: kept
            ("foobar", &member),    // not dated: kept
            ("bar250101", &member), // another user's name: kept
        ];
        let got = expired_rotation_roles(
            "foo",
            roles.iter().copied(),
            "foo260301",
            day(2026, 11, 18),
            180,
        );
        assert_eq!(
            got,
            vec!["foo250601", "foo260101", "foo260520", "foo260521"]
        );

        let none_retained =
            expired_rotation_roles("foo", roles.iter().copied(), "foo", day(2026, 11, 18), 0);
        assert!(none_retained.contains(&"foo260301".to_string()));
        assert!(!none_retained.contains(&"foo250101".to_string()));
    }

    #[test]
    fn rotated_role_names() {
        assert_eq!(
            rotated_role_name("foo", &creds("foo261121", "pw", None)),
            Some("foo261121")
        );
        assert_eq!(rotated_role_name("foo", &creds("foo", "pw", None)), None);
    }

    #[test]
    fn dated_roles_join_the_desired_state() {
        let pg = crate::pure::roles::desired::tests::manifest(
            "acid-r",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  users:\n    app: [createdb]\n    owner: []\n  databases:\n    shop: owner\n  preparedDatabases:\n    bar:\n      defaultUsers: true\n",
        );
        let config = OperatorConfig::default();
        let passwords = BTreeMap::from([("app".to_string(), "old".to_string())]);
        let mut desired =
            crate::pure::roles::desired::desired(&pg, &config, &passwords, Vec::new());
        assert!(is_database_owner(&desired, "owner"));
        assert!(is_database_owner(&desired, "bar_owner_user"));
        assert!(!is_database_owner(&desired, "bar_reader_user"));
        assert!(!is_database_owner(&desired, "app"));

        let rotated = BTreeMap::from([
            (
                "app".to_string(),
                ("app261121".to_string(), "new".to_string()),
            ),
            (
                "ghost".to_string(),
                ("ghost261121".to_string(), "x".to_string()),
            ),
        ]);
        add_rotated_roles(&mut desired, &rotated);
        let app = &desired.roles["app"];
        assert_eq!(app.password, None, "the user's own password is left alone");
        let dated = &desired.roles["app261121"];
        assert_eq!(dated.password.as_deref(), Some("new"));
        assert!(dated.flags.login && dated.flags.createdb);
        assert_eq!(dated.member_of, BTreeSet::from(["app".to_string()]));
        assert_eq!(dated.origin, Origin::Manifest);
        assert!(
            !desired.roles.contains_key("ghost261121"),
            "no role for an unknown user"
        );
    }
}
