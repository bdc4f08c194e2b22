//! Infrastructure roles: roles every cluster gets (a monitoring user, …), defined by
//! Secrets (and optionally ConfigMaps) the operator's configuration names. Pure: the
//! runtime reads the Secrets/ConfigMaps and hands their (decoded) data to these functions.
//!
//! The formats follow Zalando's `pkg/controller/util.go` (`getInfrastructureRoleDefinitions`,
//! `getInfrastructureRole`) and `docs/user.md`:
//!
//! * **legacy** (`infrastructure_roles_secret_name`): one Secret holding numbered
//!   definitions `user1`/`password1`/`inrole1`, `user2`/…; reading stops at the first
//!   missing `userN`. Each role is a LOGIN role, member of its `inroleN` if given.
//! * **definitions** (`infrastructure_roles_secrets`): `secretname:…,userkey:…,passwordkey:…`
//!   with optional `rolekey`, `defaultuservalue`, `defaultrolevalue`, `details` and
//!   `template`. The ConfigMap form of Zalando holds one definition; the
//!   `OperatorConfiguration` form holds a list, which pgop's configuration reader flattens
//!   into `;`-separated definitions, so several are accepted here. Without `template`
//!   the Secret holds one role: its name under `userkey` (or `defaultuservalue` when that
//!   key is missing or empty), its password under `passwordkey` and one membership under
//!   `rolekey` (or `defaultrolevalue`). With `template:true` the keys are prefixes of
//!   numbered definitions, as in the legacy format.
//! * **companion ConfigMap**: a ConfigMap with the *same name and namespace* as any of those
//!   Secrets describes further roles, one entry per role: the key is the role name, the
//!   value a YAML (or JSON) document with `inrole` (list of roles), `user_flags` (list of
//!   flags such as `createdb`, `nologin`) and `db_parameters` (map for
//!   `ALTER ROLE … SET`); the password is the Secret's entry under the role's name.
//!   Descriptions are read by a small reader for the YAML they use (block and flow
//!   collections, plain and quoted scalars, comments; JSON); other YAML (block scalars,
//!   anchors, tags, multi-line scalars) is refused with a problem, never guessed at.
//!
//! Roles are LOGIN roles unless `user_flags` says `nologin`, with PostgreSQL's defaults
//! otherwise (flags are read by [`super::desired::parse_flags`], as manifest users' are).
//! Roles without a password are refused (an infrastructure role exists on every cluster;
//! one nobody can log in to makes no sense, as Zalando's docs say). Refusals are
//! [`RoleProblem`]s that name the role and the reason, never a secret value. Role names,
//! memberships, parameter names and reserved names are checked where all roles meet
//! (`desired`), not here.
//!
//! Deliberate differences from Zalando, all where Zalando loses roles or fails the whole
//! sync:
//!
//! * Zalando reads numbered definitions while `N <= len(secret)` and deletes the keys it
//!   has read, so a Secret with `user1..3`/`password1..3` and nothing else loses `user3`;
//!   pgop reads until the first missing `userN`.
//! * A companion description that is not valid YAML makes Zalando drop every role of that
//!   Secret, an invalid flag fails its whole sync; pgop refuses only that role.
//! * With `details`, Zalando takes the role entirely from the YAML under that key, which
//!   cannot carry a name or password, so the role is always dropped; pgop takes flags,
//!   memberships and parameters from it and the name and password from the usual keys.
//! * A definition value may contain `:` (Zalando keeps only the text up to a second `:`).
//! * An empty password counts as none (Zalando would create the role with `PASSWORD NULL`
//!   from the companion format).
//! * `admin_role` in a companion description is read but not applied: [`RoleSpec`] has no
//!   place for it.
use std::collections::{BTreeMap, BTreeSet};

use pgop_common::config::OperatorConfig;

use super::desired::parse_flags;
use super::{Origin, RoleProblem, RoleSpec};

/// One Secret the infrastructure roles are read from, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfrastructureSource {
    /// The namespace when the configuration names one (`namespace/name`); `None`: the
    /// operator's namespace (see [`InfrastructureSource::namespace`]).
    pub secret_namespace: Option<String>,
    pub secret_name: String,
    /// Key of the role name (a prefix of `user1`, `user2`, … when `template`).
    pub user_key: Option<String>,
    /// Key of the password (a prefix when `template`).
    pub password_key: Option<String>,
    /// Key of the one role the role is a member of (a prefix when `template`).
    pub role_key: Option<String>,
    /// The role name when the Secret has none under `user_key` (not with `template`).
    pub default_user_value: Option<String>,
    /// The membership when the Secret has none under `role_key` (not with `template`).
    pub default_role_value: Option<String>,
    /// Key of a YAML description (`inrole`, `user_flags`, `db_parameters`) in the Secret.
    pub details: Option<String>,
    /// Numbered definitions (`{user_key}1`, `{password_key}1`, `{role_key}1`, …).
    pub template: bool,
}

impl InfrastructureSource {
    /// The legacy source `infrastructure_roles_secret_name` describes: numbered
    /// `user`/`password`/`inrole` keys. `secret` is `[namespace/]name`.
    pub fn legacy(secret: &str) -> Result<Self, String> {
        let (secret_namespace, secret_name) = namespaced_name(secret)?;
        Ok(Self {
            secret_namespace,
            secret_name,
            ..legacy_template()
        })
    }

    /// The Secret's (and companion ConfigMap's) namespace: the configured one, else the
    /// operator's. (Zalando resolves a name without namespace to the operator's namespace,
    /// except for its ConfigMap form of `infrastructure_roles_secrets`, where it takes
    /// `default`; pgop cannot tell the two forms apart after flattening and always takes the
    /// operator's.)
    pub fn namespace<'a>(&'a self, operator_namespace: &'a str) -> &'a str {
        self.secret_namespace
            .as_deref()
            .unwrap_or(operator_namespace)
    }
}

fn legacy_template() -> InfrastructureSource {
    InfrastructureSource {
        secret_namespace: None,
        secret_name: String::new(),
        user_key: Some("user".into()),
        password_key: Some("password".into()),
        role_key: Some("inrole".into()),
        default_user_value: None,
        default_role_value: None,
        details: None,
        template: true,
    }
}

#[cfg(test)]
/// The Secrets to read infrastructure roles from, in Zalando's order: the definitions of
/// `infrastructure_roles_secrets` first, then the legacy `infrastructure_roles_secret_name`
/// (when roles of several sources share a name, the later source wins, see [`merge`]).
/// Any malformed or incomplete definition is an error naming what is wrong; see
/// [`sources_lenient`] for Zalando's behaviour (skip it, warn, keep the rest).
pub fn sources(config: &OperatorConfig) -> Result<Vec<InfrastructureSource>, String> {
    let (sources, problems) = sources_lenient(config);
    if problems.is_empty() {
        Ok(sources)
    } else {
        Err(problems.join("; "))
    }
}

/// Like [`sources`], but as Zalando does it: unknown keys and properties without `:` are
/// ignored, incomplete definitions skipped; each of these is described in the second list
/// (for a warning).
pub fn sources_lenient(config: &OperatorConfig) -> (Vec<InfrastructureSource>, Vec<String>) {
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    if let Some(definitions) = config.infrastructure_roles_secrets.as_deref() {
        for (index, text) in definitions
            .split(';')
            .filter(|t| !t.trim().is_empty())
            .enumerate()
        {
            let (source, mut found) = parse_definition(text);
            for problem in &mut found {
                *problem = format!(
                    "infrastructure_roles_secrets definition {}: {problem}",
                    index + 1
                );
            }
            problems.extend(found);
            sources.extend(source);
        }
    }
    if let Some(name) = config
        .infrastructure_roles_secret_name
        .as_deref()
        .filter(|n| !n.trim().is_empty())
    {
        match InfrastructureSource::legacy(name) {
            Ok(source) => sources.push(source),
            Err(e) => problems.push(format!("infrastructure_roles_secret_name: {e}")),
        }
    }
    (sources, problems)
}

/// One definition `key:value,key:value`; the source if complete, and what was wrong.
fn parse_definition(text: &str) -> (Option<InfrastructureSource>, Vec<String>) {
    let mut problems = Vec::new();
    let mut secret = None;
    let mut source = InfrastructureSource {
        secret_namespace: None,
        secret_name: String::new(),
        user_key: None,
        password_key: None,
        role_key: None,
        default_user_value: None,
        default_role_value: None,
        details: None,
        template: false,
    };
    for property in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = property.split_once(':') else {
            problems.push(format!("{property:?} is not `key:value`"));
            continue;
        };
        let value = value.trim();
        let non_empty = (!value.is_empty()).then(|| value.to_string());
        match key.trim() {
            "secretname" => secret = Some(value.to_string()),
            "userkey" => source.user_key = non_empty,
            "passwordkey" => source.password_key = non_empty,
            "rolekey" => source.role_key = non_empty,
            "defaultuservalue" => source.default_user_value = non_empty,
            "defaultrolevalue" => source.default_role_value = non_empty,
            "details" => source.details = non_empty,
            "template" => match value.to_ascii_lowercase().as_str() {
                "true" => source.template = true,
                "false" | "" => source.template = false,
                _ => problems.push(format!("template must be true or false, not {value:?}")),
            },
            other => problems.push(format!(
                "unknown key {other:?} (known: secretname, userkey, passwordkey, rolekey, \
                 defaultuservalue, defaultrolevalue, details, template)"
            )),
        }
    }
    match secret.as_deref().map(namespaced_name) {
        None => problems.push("no secretname; definition ignored".into()),
        Some(Err(e)) => problems.push(format!("secretname: {e}; definition ignored")),
        Some(Ok((namespace, name))) => {
            source.secret_namespace = namespace;
            source.secret_name = name;
        }
    }
    if source.user_key.is_none() && (source.template || source.default_user_value.is_none()) {
        problems.push(if source.template {
            "no userkey; definition ignored".to_string()
        } else {
            "neither userkey nor defaultuservalue; definition ignored".to_string()
        });
    }
    if source.password_key.is_none() {
        problems.push("no passwordkey; definition ignored".into());
    }
    let complete = !source.secret_name.is_empty()
        && source.password_key.is_some()
        && (source.user_key.is_some() || (!source.template && source.default_user_value.is_some()));
    (complete.then_some(source), problems)
}

/// `[namespace/]name` as Zalando decodes it: split at the first `/`, an empty namespace is
/// none, an empty name an error.
fn namespaced_name(value: &str) -> Result<(Option<String>, String), String> {
    let value = value.trim();
    let (namespace, name) = match value.split_once('/') {
        Some((namespace, name)) => (namespace.trim(), name.trim_start_matches('/').trim()),
        None => ("", value),
    };
    if name.is_empty() {
        return Err(format!("{value:?} is not a valid [namespace/]name"));
    }
    let namespace = (!namespace.is_empty()).then(|| namespace.to_string());
    Ok((namespace, name.to_string()))
}

#[cfg(test)]
/// The roles the legacy Secret (`infrastructure_roles_secret_name`) defines: numbered
/// `userN`/`passwordN`/`inroleN` definitions, then the roles its companion ConfigMap (same
/// name and namespace; `None` when there is none) describes, with their passwords from the
/// Secret. A later definition of the same name wins.
pub fn legacy_roles(
    secret_data: &BTreeMap<String, String>,
    config_map: Option<&BTreeMap<String, String>>,
) -> (Vec<RoleSpec>, Vec<RoleProblem>) {
    roles_with_config_map(&legacy_template(), secret_data, config_map)
}

#[cfg(test)]
/// The roles one source's Secret defines (without its companion ConfigMap). Prefer
/// [`roles_with_config_map`]: Zalando reads the companion ConfigMap for every source.
pub fn roles_from(
    source: &InfrastructureSource,
    secret_data: &BTreeMap<String, String>,
) -> (Vec<RoleSpec>, Vec<RoleProblem>) {
    roles_with_config_map(source, secret_data, None)
}

/// The roles one source defines: those of its Secret, then those its companion ConfigMap
/// (same name and namespace as the Secret; `None` when there is none) describes. Keys the
/// numbered definitions used are not taken as companion passwords (as in Zalando). A later
/// definition of the same name wins; the result is sorted by name.
pub fn roles_with_config_map(
    source: &InfrastructureSource,
    secret_data: &BTreeMap<String, String>,
    config_map: Option<&BTreeMap<String, String>>,
) -> (Vec<RoleSpec>, Vec<RoleProblem>) {
    let mut roles = Vec::new();
    let mut problems = Vec::new();
    let mut used_keys = BTreeSet::new();
    if source.template {
        numbered_roles(
            source,
            secret_data,
            &mut used_keys,
            &mut roles,
            &mut problems,
        );
    } else {
        single_role(source, secret_data, &mut roles, &mut problems);
    }
    if let Some(config_map) = config_map {
        companion_roles(
            source,
            config_map,
            secret_data,
            &used_keys,
            &mut roles,
            &mut problems,
        );
    }
    (merge([roles]), problems)
}

/// All roles of several sources (in [`sources`] order), one per name: the last definition
/// wins, as in Zalando. Sorted by name.
pub fn merge(lists: impl IntoIterator<Item = Vec<RoleSpec>>) -> Vec<RoleSpec> {
    let mut by_name = BTreeMap::new();
    for role in lists.into_iter().flatten() {
        by_name.insert(role.name.clone(), role);
    }
    by_name.into_values().collect()
}

/// " in secret \"name\"" when the source has a name (legacy_roles' template has none).
fn in_secret(source: &InfrastructureSource) -> String {
    if source.secret_name.is_empty() {
        String::new()
    } else {
        format!(" in secret {:?}", source.secret_name)
    }
}

fn numbered_roles(
    source: &InfrastructureSource,
    data: &BTreeMap<String, String>,
    used_keys: &mut BTreeSet<String>,
    roles: &mut Vec<RoleSpec>,
    problems: &mut Vec<RoleProblem>,
) {
    let user_prefix = source.user_key.as_deref().unwrap_or("user");
    let password_prefix = source.password_key.as_deref().unwrap_or("password");
    // Each definition uses at least its user key, so there are at most `len` of them.
    for index in 1..=data.len() {
        let user_key = format!("{user_prefix}{index}");
        let Some(name) = data.get(&user_key) else {
            break;
        };
        used_keys.insert(user_key.clone());
        let password_key = format!("{password_prefix}{index}");
        let password = data.get(&password_key).filter(|p| !p.is_empty()).cloned();
        used_keys.insert(password_key.clone());
        let mut member_of = BTreeSet::new();
        if let Some(prefix) = source.role_key.as_deref() {
            let role_key = format!("{prefix}{index}");
            if let Some(role) = data.get(&role_key).filter(|r| !r.is_empty()) {
                member_of.insert(role.clone());
            }
            used_keys.insert(role_key);
        }
        if name.is_empty() {
            problems.push(RoleProblem {
                role: String::new(),
                reason: format!(
                    "infrastructure role under key {user_key:?}{} has an empty name and is ignored",
                    in_secret(source)
                ),
            });
            continue;
        }
        let Some(password) = password else {
            problems.push(no_password(name, &format!("key {password_key:?}"), source));
            continue;
        };
        push_role(
            name,
            password,
            Description {
                inrole: member_of.into_iter().collect(),
                ..Description::default()
            },
            roles,
            problems,
        );
    }
}

fn single_role(
    source: &InfrastructureSource,
    data: &BTreeMap<String, String>,
    roles: &mut Vec<RoleSpec>,
    problems: &mut Vec<RoleProblem>,
) {
    let value = |key: &Option<String>| {
        key.as_deref()
            .and_then(|k| data.get(k))
            .filter(|v| !v.is_empty())
    };
    let name = value(&source.user_key).or(source.default_user_value.as_ref());
    let Some(name) = name else {
        problems.push(RoleProblem {
            role: String::new(),
            reason: format!(
                "infrastructure role{} has no name (no key {:?} and no defaultuservalue) and is \
                 ignored",
                in_secret(source),
                source.user_key.as_deref().unwrap_or_default()
            ),
        });
        return;
    };
    let mut description = Description::default();
    if let Some(text) = value(&source.details) {
        match parse_description(text) {
            Ok(d) => description = d,
            Err(e) => {
                problems.push(RoleProblem {
                    role: name.clone(),
                    reason: format!(
                        "the description under key {:?}{} is not valid: {e}; role ignored",
                        source.details.as_deref().unwrap_or_default(),
                        in_secret(source)
                    ),
                });
                return;
            }
        }
    }
    if let Some(role) = value(&source.role_key).or(source.default_role_value.as_ref()) {
        description.inrole.push(role.clone());
    }
    let Some(password) = value(&source.password_key) else {
        let key = source.password_key.as_deref().unwrap_or_default();
        problems.push(no_password(name, &format!("key {key:?}"), source));
        return;
    };
    push_role(name, password.clone(), description, roles, problems);
}

fn companion_roles(
    source: &InfrastructureSource,
    config_map: &BTreeMap<String, String>,
    secret_data: &BTreeMap<String, String>,
    used_keys: &BTreeSet<String>,
    roles: &mut Vec<RoleSpec>,
    problems: &mut Vec<RoleProblem>,
) {
    for (name, text) in config_map {
        let description = match parse_description(text) {
            Ok(d) => d,
            Err(e) => {
                problems.push(RoleProblem {
                    role: name.clone(),
                    reason: format!(
                        "its description in the infrastructure roles ConfigMap is not valid: {e}; \
                         role ignored"
                    ),
                });
                continue;
            }
        };
        let password = secret_data
            .get(name)
            .filter(|p| !p.is_empty() && !used_keys.contains(name.as_str()));
        let Some(password) = password else {
            problems.push(no_password(name, "its own key", source));
            continue;
        };
        push_role(name, password.clone(), description, roles, problems);
    }
}

fn no_password(name: &str, place: &str, source: &InfrastructureSource) -> RoleProblem {
    RoleProblem {
        role: name.to_string(),
        reason: format!(
            "infrastructure role has no password ({place}{} is missing or empty) and is ignored",
            in_secret(source)
        ),
    }
}

/// Reads the flags (Zalando's `normalizeUserFlags`, shared with manifest users: LOGIN
/// unless NOLOGIN, PostgreSQL's defaults otherwise); adds the role or a problem. Names,
/// memberships and parameters are checked where all roles meet (`desired`).
fn push_role(
    name: &str,
    password: String,
    description: Description,
    roles: &mut Vec<RoleSpec>,
    problems: &mut Vec<RoleProblem>,
) {
    let flags = match parse_flags(&description.user_flags) {
        Ok(parsed) => parsed.flags,
        Err(e) => {
            problems.push(RoleProblem {
                role: name.to_string(),
                reason: format!("invalid user_flags: {e}; role ignored"),
            });
            return;
        }
    };
    roles.push(RoleSpec {
        name: name.to_string(),
        flags,
        password: Some(password),
        member_of: description
            .inrole
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect(),
        parameters: description.db_parameters,
        origin: Origin::Infrastructure,
    });
}

/// A role description (companion ConfigMap entry or `details`), as Zalando's `PgUser`
/// YAML fields. Holds no password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Description {
    inrole: Vec<String>,
    user_flags: Vec<String>,
    db_parameters: BTreeMap<String, String>,
}

fn parse_description(text: &str) -> Result<Description, String> {
    let entries = match yaml::parse(text)? {
        yaml::Node::Null => return Ok(Description::default()),
        yaml::Node::Map(entries) => entries,
        _ => return Err("expected a mapping (inrole, user_flags, db_parameters)".into()),
    };
    let mut description = Description::default();
    for (key, value) in entries {
        // Other keys are ignored, as Go's YAML decoder does.
        match key.as_str() {
            "inrole" => description.inrole = string_list(value, "inrole")?,
            "user_flags" => description.user_flags = string_list(value, "user_flags")?,
            "db_parameters" => description.db_parameters = string_map(value, "db_parameters")?,
            // Checked, but not applied (see the module documentation).
            "admin_role" if !matches!(value, yaml::Node::Null | yaml::Node::Scalar(_)) => {
                return Err("admin_role must be a string".into());
            }
            _ => {}
        }
    }
    Ok(description)
}

/// A list of strings; a single string counts as a list of one.
fn string_list(node: yaml::Node, field: &str) -> Result<Vec<String>, String> {
    match node {
        yaml::Node::Null => Ok(Vec::new()),
        yaml::Node::Scalar(s) => Ok(vec![s]),
        yaml::Node::Seq(items) => items
            .into_iter()
            .filter(|item| *item != yaml::Node::Null)
            .map(|item| match item {
                yaml::Node::Scalar(s) => Ok(s),
                _ => Err(format!("{field} must be a list of strings")),
            })
            .collect(),
        yaml::Node::Map(_) => Err(format!("{field} must be a list of strings")),
    }
}

fn string_map(node: yaml::Node, field: &str) -> Result<BTreeMap<String, String>, String> {
    match node {
        yaml::Node::Null => Ok(BTreeMap::new()),
        yaml::Node::Map(entries) => entries
            .into_iter()
            .map(|(key, value)| match value {
                yaml::Node::Scalar(s) => Ok((key, s)),
                yaml::Node::Null => Err(format!("{field}.{key} has no value")),
                _ => Err(format!("{field}.{key} must be a string")),
            })
            .collect(),
        _ => Err(format!("{field} must be a mapping")),
    }
}

/// The part of YAML role descriptions use: block mappings and sequences by indentation,
/// flow collections (`[a, b]`, `{k: v}`), plain, single- and double-quoted scalars,
/// comments; JSON documents. Anything else (block scalars `|`/`>`, anchors, tags,
/// multi-line scalars, several documents) is an error rather than a guess. Errors name
/// line numbers, never the text (descriptions sit next to passwords).
mod yaml {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Node {
        Null,
        Scalar(String),
        Seq(Vec<Node>),
        Map(Vec<(String, Node)>),
    }

    pub fn parse(text: &str) -> Result<Node, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(Node::Null);
        }
        // JSON is YAML; serde_json reads its escapes exactly.
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed) {
                return Ok(from_json(value));
            }
        }
        let lines = lines(text)?;
        if lines.is_empty() {
            return Ok(Node::Null);
        }
        let mut parser = Parser {
            lines: &lines,
            pos: 0,
        };
        let node = parser.block(lines[0].indent)?;
        if let Some(line) = lines.get(parser.pos) {
            return Err(format!("line {}: unexpected indentation", line.number));
        }
        Ok(node)
    }

    fn from_json(value: serde_json::Value) -> Node {
        use serde_json::Value;
        match value {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Scalar(b.to_string()),
            Value::Number(n) => Node::Scalar(n.to_string()),
            Value::String(s) => Node::Scalar(s),
            Value::Array(items) => Node::Seq(items.into_iter().map(from_json).collect()),
            Value::Object(fields) => {
                Node::Map(fields.into_iter().map(|(k, v)| (k, from_json(v))).collect())
            }
        }
    }

    struct Line {
        number: usize,
        indent: usize,
        text: String,
    }

    /// Non-empty lines without comments, with their indentation.
    fn lines(text: &str) -> Result<Vec<Line>, String> {
        let mut lines: Vec<Line> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let number = index + 1;
            let rest = raw.trim_start_matches(' ');
            let indent = raw.len() - rest.len();
            let content = strip_comment(rest).trim_end();
            if content.is_empty() {
                continue;
            }
            if content.starts_with('\t') {
                return Err(format!("line {number}: tabs cannot indent YAML"));
            }
            if content == "---" || content.starts_with("--- ") {
                if lines.is_empty() && content == "---" {
                    continue;
                }
                return Err(format!("line {number}: only one document is supported"));
            }
            if content == "..." {
                return Err(format!(
                    "line {number}: document end markers are not supported"
                ));
            }
            lines.push(Line {
                number,
                indent,
                text: content.to_string(),
            });
        }
        Ok(lines)
    }

    /// Whether a quote at byte `i` of `s` opens a quoted scalar (it follows a token start).
    fn opens_quote(s: &str, i: usize) -> bool {
        s[..i]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '[' | '{' | ',' | ':' | '-'))
    }

    /// Positions in `s` outside quotes, with the bracket depth there: calls `f(i, c, depth)`
    /// for each such char until `f` returns true; returns that position.
    fn scan(s: &str, mut f: impl FnMut(usize, char, usize) -> bool) -> Option<usize> {
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut depth = 0usize;
        let mut chars = s.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match quote {
                Some('"') => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        quote = None;
                    }
                }
                Some(_) => {
                    if c == '\'' {
                        if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                            chars.next();
                        } else {
                            quote = None;
                        }
                    }
                }
                None => {
                    if (c == '"' || c == '\'') && opens_quote(s, i) {
                        quote = Some(c);
                        continue;
                    }
                    if f(i, c, depth) {
                        return Some(i);
                    }
                    match c {
                        '[' | '{' => depth += 1,
                        ']' | '}' => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
            }
        }
        None
    }

    fn strip_comment(s: &str) -> &str {
        let at = scan(s, |i, c, _| {
            c == '#' && s[..i].chars().next_back().is_none_or(char::is_whitespace)
        });
        at.map_or(s, |i| &s[..i])
    }

    /// The `:` that separates a block mapping key from its value (followed by a space or
    /// the end of the line, outside quotes and flow collections).
    fn mapping_colon(s: &str) -> Option<usize> {
        scan(s, |i, c, depth| {
            c == ':' && depth == 0 && s[i + 1..].chars().next().is_none_or(|n| n == ' ')
        })
    }

    fn is_seq_item(s: &str) -> bool {
        s == "-" || s.starts_with("- ")
    }

    struct Parser<'a> {
        lines: &'a [Line],
        pos: usize,
    }

    impl Parser<'_> {
        fn block(&mut self, indent: usize) -> Result<Node, String> {
            let line = &self.lines[self.pos];
            if is_seq_item(&line.text) {
                self.sequence(indent)
            } else if mapping_colon(&line.text).is_some() {
                self.mapping(indent)
            } else {
                self.pos += 1;
                inline(&line.text, line.number)
            }
        }

        fn sequence(&mut self, indent: usize) -> Result<Node, String> {
            let mut items = Vec::new();
            while let Some(line) = self.lines.get(self.pos) {
                if line.indent < indent || (line.indent == indent && !is_seq_item(&line.text)) {
                    break;
                }
                if line.indent > indent {
                    return Err(format!("line {}: unexpected indentation", line.number));
                }
                let rest = line.text[1..].trim_start();
                self.pos += 1;
                if rest.is_empty() {
                    items.push(match self.lines.get(self.pos) {
                        Some(next) if next.indent > indent => self.block(next.indent)?,
                        _ => Node::Null,
                    });
                } else if is_seq_item(rest) || mapping_colon(rest).is_some() {
                    return Err(format!(
                        "line {}: nested collections in sequence items are not supported",
                        line.number
                    ));
                } else {
                    items.push(inline(rest, line.number)?);
                }
            }
            Ok(Node::Seq(items))
        }

        fn mapping(&mut self, indent: usize) -> Result<Node, String> {
            let mut entries: Vec<(String, Node)> = Vec::new();
            while let Some(line) = self.lines.get(self.pos) {
                if line.indent < indent {
                    break;
                }
                if line.indent > indent {
                    return Err(format!("line {}: unexpected indentation", line.number));
                }
                let Some(colon) = mapping_colon(&line.text) else {
                    return Err(format!("line {}: expected `key: value`", line.number));
                };
                let number = line.number;
                let key = key(&line.text[..colon], number)?;
                let value_text = line.text[colon + 1..].trim();
                self.pos += 1;
                let value = if value_text.is_empty() {
                    match self.lines.get(self.pos) {
                        Some(next) if next.indent > indent => self.block(next.indent)?,
                        // YAML allows a sequence value at its key's indentation.
                        Some(next) if next.indent == indent && is_seq_item(&next.text) => {
                            self.sequence(indent)?
                        }
                        _ => Node::Null,
                    }
                } else {
                    inline(value_text, number)?
                };
                if entries.iter().any(|(k, _)| *k == key) {
                    return Err(format!("line {number}: key {key:?} appears twice"));
                }
                entries.push((key, value));
            }
            Ok(Node::Map(entries))
        }
    }

    fn key(text: &str, number: usize) -> Result<String, String> {
        let text = text.trim();
        let key = match text.chars().next() {
            Some('"' | '\'') => {
                let (value, used) = quoted(text).map_err(|e| format!("line {number}: {e}"))?;
                if !text[used..].trim().is_empty() {
                    return Err(format!("line {number}: text after a quoted key"));
                }
                value
            }
            Some('[' | '{' | '?' | '&' | '*' | '!' | '|' | '>') => {
                return Err(format!("line {number}: unsupported key"))
            }
            _ => text.to_string(),
        };
        if key.is_empty() {
            return Err(format!("line {number}: empty key"));
        }
        Ok(key)
    }

    /// A value on one line: a flow collection, a quoted or a plain scalar.
    fn inline(text: &str, number: usize) -> Result<Node, String> {
        let text = text.trim();
        let at = |e: String| format!("line {number}: {e}");
        match text.chars().next() {
            Some('[' | '{') => {
                let mut flow = Flow { s: text, pos: 0 };
                let node = flow.value().map_err(at)?;
                flow.skip_spaces();
                if flow.pos < text.len() {
                    return Err(at("text after a flow collection".into()));
                }
                Ok(node)
            }
            Some('"' | '\'') => {
                let (value, used) = quoted(text).map_err(at)?;
                if !text[used..].trim().is_empty() {
                    return Err(at("text after a quoted string".into()));
                }
                Ok(Node::Scalar(value))
            }
            Some('|' | '>') => Err(at("block scalars (| and >) are not supported".into())),
            Some('&' | '*') => Err(at("anchors and aliases are not supported".into())),
            Some('!') => Err(at("tags are not supported".into())),
            Some('@' | '`') => Err(at("a plain value cannot start with @ or `".into())),
            _ if mapping_colon(text).is_some() => {
                Err(at("a mapping cannot be a value on the same line".into()))
            }
            _ => Ok(plain(text)),
        }
    }

    fn plain(text: &str) -> Node {
        match text {
            "" | "~" | "null" | "Null" | "NULL" => Node::Null,
            _ => Node::Scalar(text.to_string()),
        }
    }

    /// A quoted scalar at the start of `s`: its value and the bytes it spans.
    fn quoted(s: &str) -> Result<(String, usize), String> {
        let mut chars = s.char_indices();
        let Some((_, quote)) = chars.next() else {
            return Err("missing quote".into());
        };
        let mut value = String::new();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                if quote == '\'' && s[i + 1..].starts_with('\'') {
                    chars.next();
                    value.push('\'');
                    continue;
                }
                return Ok((value, i + 1));
            }
            if quote == '"' && c == '\\' {
                let Some((_, escape)) = chars.next() else {
                    break;
                };
                match escape {
                    '\\' | '"' | '/' | ' ' => value.push(escape),
                    'n' => value.push('\n'),
                    't' => value.push('\t'),
                    'r' => value.push('\r'),
                    '0' => value.push('\0'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                        let code = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .filter(|_| hex.len() == 4)
                            .ok_or("invalid \\u escape")?;
                        value.push(code);
                    }
                    _ => return Err("unsupported escape in a double-quoted string".into()),
                }
                continue;
            }
            value.push(c);
        }
        Err("unterminated quoted string (multi-line strings are not supported)".into())
    }

    struct Flow<'a> {
        s: &'a str,
        pos: usize,
    }

    impl Flow<'_> {
        fn peek(&self) -> Option<char> {
            self.s[self.pos..].chars().next()
        }

        fn skip_spaces(&mut self) {
            let rest = &self.s[self.pos..];
            self.pos += rest.len() - rest.trim_start().len();
        }

        fn value(&mut self) -> Result<Node, String> {
            self.skip_spaces();
            match self.peek() {
                Some('[') => {
                    self.pos += 1;
                    let mut items = Vec::new();
                    loop {
                        self.skip_spaces();
                        if self.peek() == Some(']') {
                            self.pos += 1;
                            return Ok(Node::Seq(items));
                        }
                        items.push(self.value()?);
                        self.skip_spaces();
                        match self.peek() {
                            Some(',') => self.pos += 1,
                            Some(']') => {
                                self.pos += 1;
                                return Ok(Node::Seq(items));
                            }
                            _ => return Err("expected ',' or ']' in a flow sequence".into()),
                        }
                    }
                }
                Some('{') => {
                    self.pos += 1;
                    let mut entries: Vec<(String, Node)> = Vec::new();
                    loop {
                        self.skip_spaces();
                        if self.peek() == Some('}') {
                            self.pos += 1;
                            return Ok(Node::Map(entries));
                        }
                        let key = match self.scalar(true)? {
                            Node::Scalar(key) => key,
                            _ => return Err("empty key in a flow mapping".into()),
                        };
                        self.skip_spaces();
                        let value = if self.peek() == Some(':') {
                            self.pos += 1;
                            self.skip_spaces();
                            if matches!(self.peek(), Some(',' | '}')) {
                                Node::Null
                            } else {
                                self.value()?
                            }
                        } else {
                            Node::Null
                        };
                        if entries.iter().any(|(k, _)| *k == key) {
                            return Err(format!("key {key:?} appears twice"));
                        }
                        entries.push((key, value));
                        self.skip_spaces();
                        match self.peek() {
                            Some(',') => self.pos += 1,
                            Some('}') => {
                                self.pos += 1;
                                return Ok(Node::Map(entries));
                            }
                            _ => return Err("expected ',' or '}' in a flow mapping".into()),
                        }
                    }
                }
                _ => self.scalar(false),
            }
        }

        /// A scalar inside a flow collection; a key ends at `:`.
        fn scalar(&mut self, is_key: bool) -> Result<Node, String> {
            self.skip_spaces();
            let rest = &self.s[self.pos..];
            match rest.chars().next() {
                Some('"' | '\'') => {
                    let (value, used) = quoted(rest)?;
                    self.pos += used;
                    Ok(Node::Scalar(value))
                }
                Some('&' | '*' | '!' | '|' | '>') => {
                    Err("anchors, aliases, tags and block scalars are not supported".into())
                }
                None => Err("unterminated flow collection".into()),
                _ => {
                    let end = rest
                        .char_indices()
                        .find(|(i, c)| {
                            matches!(c, ',' | '[' | ']' | '{' | '}')
                                || (*c == ':'
                                    && (is_key
                                        || rest[i + 1..]
                                            .chars()
                                            .next()
                                            .is_none_or(|n| n == ' ' || n == ',')))
                        })
                        .map_or(rest.len(), |(i, _)| i);
                    let text = rest[..end].trim();
                    if text.is_empty() {
                        return Err("empty entry in a flow collection".into());
                    }
                    self.pos += end;
                    Ok(plain(text))
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn s(v: &str) -> Node {
            Node::Scalar(v.into())
        }

        #[test]
        fn block_and_flow_forms() {
            let cases: Vec<(&str, Node)> = vec![
                ("", Node::Null),
                ("# only a comment\n", Node::Null),
                ("a: b", Node::Map(vec![("a".into(), s("b"))])),
                (
                    "---\na: [x, 'y z', \"w\"]  # comment\nb:\n- 1\n- two\nc:\n  k: v # c\n  'q k': \"x # y\"\nd:\n",
                    Node::Map(vec![
                        ("a".into(), Node::Seq(vec![s("x"), s("y z"), s("w")])),
                        ("b".into(), Node::Seq(vec![s("1"), s("two")])),
                        (
                            "c".into(),
                            Node::Map(vec![("k".into(), s("v")), ("q k".into(), s("x # y"))]),
                        ),
                        ("d".into(), Node::Null),
                    ]),
                ),
                (
                    "  a:\n    - x\n    -\n  b: {k: v, e: , 'f': [1, 2]}\n",
                    Node::Map(vec![
                        ("a".into(), Node::Seq(vec![s("x"), Node::Null])),
                        (
                            "b".into(),
                            Node::Map(vec![
                                ("k".into(), s("v")),
                                ("e".into(), Node::Null),
                                ("f".into(), Node::Seq(vec![s("1"), s("2")])),
                            ]),
                        ),
                    ]),
                ),
                (
                    "url: http://x:1/a#frag\nit: it's\nq: 'it''s'\ne: \"a\\\"b\\u00e9\"",
                    Node::Map(vec![
                        ("url".into(), s("http://x:1/a#frag")),
                        ("it".into(), s("it's")),
                        ("q".into(), s("it's")),
                        ("e".into(), s("a\"bé")),
                    ]),
                ),
                (
                    r#"{"inrole": ["a"], "n": 1, "t": true, "z": null}"#,
                    Node::Map(vec![
                        ("inrole".into(), Node::Seq(vec![s("a")])),
                        ("n".into(), s("1")),
                        ("t".into(), s("true")),
                        ("z".into(), Node::Null),
                    ]),
                ),
                ("[a, b]", Node::Seq(vec![s("a"), s("b")])),
                ("- a\n- b", Node::Seq(vec![s("a"), s("b")])),
                ("plain", s("plain")),
            ];
            for (text, expected) in cases {
                assert_eq!(parse(text), Ok(expected), "{text:?}");
            }
        }

        #[test]
        fn unsupported_or_broken_documents_are_errors() {
            for text in [
                "a: |\n  text",
                "a: >\n  text",
                "a: &x 1",
                "a: *x",
                "a: !!str 1",
                "a: b: c",
                "a: [x, y",
                "a: 'open",
                "a:\n\t- x",
                "a: 1\n  b: 2",
                "a: 1\na: 2",
                "- a: 1",
                "a: 1\n---\nb: 2",
                "a: {k: v} extra",
                "a: \"bad \\q escape\"",
                "  a: 1\nb: 2",
            ] {
                assert!(parse(text).is_err(), "{text:?} parsed as {:?}", parse(text));
            }
        }

        #[test]
        fn errors_name_lines_not_content() {
            let e = parse("a: 1\nb: |\n  s3cr3t-value").unwrap_err();
            assert!(e.starts_with("line 2:"), "{e}");
            assert!(!e.contains("s3cr3t"), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::roles::RoleFlags;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn role(name: &str, password: &str, member_of: &[&str]) -> RoleSpec {
        RoleSpec {
            name: name.into(),
            flags: RoleFlags::login(),
            password: Some(password.into()),
            member_of: member_of.iter().map(|m| m.to_string()).collect(),
            parameters: BTreeMap::new(),
            origin: Origin::Infrastructure,
        }
    }

    fn config(secret_name: Option<&str>, secrets: Option<&str>) -> OperatorConfig {
        OperatorConfig {
            infrastructure_roles_secret_name: secret_name.map(Into::into),
            infrastructure_roles_secrets: secrets.map(Into::into),
            ..OperatorConfig::default()
        }
    }

    fn source(secret: &str) -> InfrastructureSource {
        InfrastructureSource {
            secret_namespace: None,
            secret_name: secret.into(),
            user_key: Some("user".into()),
            password_key: Some("password".into()),
            role_key: None,
            default_user_value: None,
            default_role_value: None,
            details: None,
            template: false,
        }
    }

    /// No problem text and no Debug output of a problem contains a password.
    fn assert_no_secret(problems: &[RoleProblem], secrets: &[&str]) {
        for problem in problems {
            for secret in secrets {
                let shown = format!("{problem} {problem:?}");
                assert!(!shown.contains(secret), "{secret:?} shown in {shown}");
            }
        }
    }

    #[test]
    fn sources_from_the_configuration() {
        let legacy = InfrastructureSource {
            secret_name: "postgresql-infrastructure-roles".into(),
            ..legacy_template()
        };
        let new = |name: &str| InfrastructureSource {
            secret_name: name.into(),
            user_key: Some("test-user".into()),
            password_key: Some("test-password".into()),
            role_key: Some("test-role".into()),
            ..source("")
        };
        let cases: Vec<(OperatorConfig, Vec<InfrastructureSource>)> = vec![
            (config(None, None), vec![]),
            (config(Some(""), Some("  ")), vec![]),
            (
                config(Some("postgresql-infrastructure-roles"), None),
                vec![legacy.clone()],
            ),
            (
                config(Some("ops/roles"), None),
                vec![InfrastructureSource {
                    secret_namespace: Some("ops".into()),
                    secret_name: "roles".into(),
                    ..legacy_template()
                }],
            ),
            // Zalando's TestInfrastructureRoleDefinitions: the ConfigMap form.
            (
                config(
                    None,
                    Some(
                        "secretname: infrastructureroles-new-test, userkey: test-user, \
                         passwordkey: test-password, rolekey: test-role",
                    ),
                ),
                vec![new("infrastructureroles-new-test")],
            ),
            (
                config(
                    None,
                    Some(
                        "secretname: infrastructureroles-new-test, userkey: test-user, \
                         passwordkey: test-password, defaultrolevalue: test-role",
                    ),
                ),
                vec![InfrastructureSource {
                    role_key: None,
                    default_role_value: Some("test-role".into()),
                    ..new("infrastructureroles-new-test")
                }],
            ),
            // Both: the definitions first, then the legacy secret.
            (
                config(
                    Some("postgresql-infrastructure-roles"),
                    Some(
                        "secretname: infrastructureroles-new-test, userkey: test-user, \
                         passwordkey: test-password, rolekey: test-role",
                    ),
                ),
                vec![new("infrastructureroles-new-test"), legacy.clone()],
            ),
            // Zalando's configmap.yaml example.
            (
                config(
                    None,
                    Some("secretname:monitoring-roles,userkey:user,passwordkey:password,rolekey:inrole"),
                ),
                vec![InfrastructureSource {
                    role_key: Some("inrole".into()),
                    ..source("monitoring-roles")
                }],
            ),
            // The OperatorConfiguration list, flattened with `;`.
            (
                config(
                    None,
                    Some(
                        "secretname:ns/roles,userkey:user,passwordkey:password,template:true;\
                         secretname:b,passwordkey:p,defaultuservalue:x,details:d;",
                    ),
                ),
                vec![
                    InfrastructureSource {
                        secret_namespace: Some("ns".into()),
                        secret_name: "roles".into(),
                        template: true,
                        ..source("")
                    },
                    InfrastructureSource {
                        user_key: None,
                        password_key: Some("p".into()),
                        default_user_value: Some("x".into()),
                        details: Some("d".into()),
                        ..source("b")
                    },
                ],
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(sources(&config), Ok(expected.clone()), "{config:?}");
            assert_eq!(sources_lenient(&config), (expected, vec![]));
        }
    }

    #[test]
    fn malformed_definitions_are_errors_or_skipped() {
        let cases: Vec<(&str, usize, &str)> = vec![
            // Zalando's "incorrect configmap format" and "configmap without a secret".
            ("wrong-format", 0, "is not `key:value`"),
            (
                "userkey: test-user, passwordkey: test-password, rolekey: test-role",
                0,
                "no secretname",
            ),
            ("secretname:s,userkey:u", 0, "no passwordkey"),
            (
                "secretname:s,passwordkey:p",
                0,
                "neither userkey nor defaultuservalue",
            ),
            (
                "secretname:s,passwordkey:p,defaultuservalue:x,template:true",
                0,
                "no userkey",
            ),
            ("secretname:/,userkey:u,passwordkey:p", 0, "not a valid"),
            // Unknown keys are ignored, the definition kept.
            (
                "secretname:s,userkey:u,passwordkey:p,colour:blue",
                1,
                "unknown key \"colour\"",
            ),
            (
                "secretname:s,userkey:u,passwordkey:p,template:yes",
                1,
                "template must be",
            ),
        ];
        for (text, kept, message) in cases {
            let config = config(Some("legacy"), Some(text));
            let (found, problems) = sources_lenient(&config);
            assert_eq!(found.len(), kept + 1, "{text}: {found:?}");
            assert_eq!(found.last().unwrap().secret_name, "legacy");
            assert!(
                problems.iter().any(|p| p.contains(message)),
                "{text}: {problems:?}"
            );
            let error = sources(&config).unwrap_err();
            assert!(
                error.starts_with("infrastructure_roles_secrets definition 1:"),
                "{error}"
            );
            assert!(error.contains(message), "{error}");
        }
        let (_, problems) = sources_lenient(&config(Some(" ns/ "), None));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("infrastructure_roles_secret_name:"));
    }

    #[test]
    fn namespace_defaults_to_the_operators() {
        let legacy = InfrastructureSource::legacy("roles").unwrap();
        assert_eq!(legacy.namespace("pgop"), "pgop");
        let legacy = InfrastructureSource::legacy("ops/roles").unwrap();
        assert_eq!(legacy.namespace("pgop"), "ops");
        assert_eq!(legacy.secret_name, "roles");
    }

    #[test]
    fn zalandos_example_manifests() {
        // manifests/infrastructure-roles.yaml (decoded) and
        // manifests/infrastructure-roles-configmap.yaml.
        let secret = data(&[
            ("user1", "robot_zmon_acid_monitoring"),
            ("inrole1", "robot_zmon"),
            ("user2", "testuser"),
            ("password2", "foobar"),
            ("batman", "justice"),
        ]);
        let config_map = data(&[(
            "batman",
            "inrole: [admin]  # following roles will be assigned to the new user\n\
             user_flags:\n  - createdb\n\
             db_parameters:  # db parameters, applyed for this particular user\n  log_statement: all\n",
        )]);
        let (roles, problems) = legacy_roles(&secret, Some(&config_map));
        let batman = RoleSpec {
            flags: RoleFlags {
                createdb: true,
                ..RoleFlags::login()
            },
            parameters: [("log_statement".to_string(), "all".to_string())].into(),
            ..role("batman", "justice", &["admin"])
        };
        assert_eq!(roles, vec![batman, role("testuser", "foobar", &[])]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].role, "robot_zmon_acid_monitoring");
        assert!(problems[0].reason.contains("no password"), "{problems:?}");
        assert_no_secret(&problems, &["justice", "foobar"]);

        // Without the ConfigMap, batman is just a key nobody asks for.
        let (roles, _) = legacy_roles(&secret, None);
        assert_eq!(roles, vec![role("testuser", "foobar", &[])]);

        // manifests/infrastructure-roles-new.yaml with a definition naming its keys.
        let secret = data(&[
            ("user", "robot_zmon_acid_monitoring_new"),
            ("role", "robot_zmon"),
            ("password", "foobar_new"),
        ]);
        let source = InfrastructureSource {
            role_key: Some("role".into()),
            ..source("postgresql-infrastructure-roles-new")
        };
        assert_eq!(
            roles_from(&source, &secret),
            (
                vec![role(
                    "robot_zmon_acid_monitoring_new",
                    "foobar_new",
                    &["robot_zmon"]
                )],
                vec![]
            )
        );
    }

    #[test]
    fn zalandos_unit_test_secrets() {
        // The mock secrets of Zalando's TestOldInfrastructureRoleFormat and
        // TestNewInfrastructureRoleFormat, with the mock ConfigMaps of the same names.
        let old = data(&[
            ("user1", "testrole"),
            ("password1", "testpassword"),
            ("inrole1", "testinrole"),
            ("foobar", "cGFzc3dvcmQ="),
        ]);
        let (roles, problems) = legacy_roles(&old, None);
        assert_eq!(
            roles,
            vec![role("testrole", "testpassword", &["testinrole"])]
        );
        assert_eq!(problems, vec![]);

        let new = data(&[
            ("user", "new-test-role"),
            ("password", "new-test-password"),
            ("inrole", "new-test-inrole"),
            ("new-foobar", "cGFzc3dvcmQ="),
        ]);
        let companion = data(&[("new-foobar", "user_flags:\n  - createdb\n")]);
        let source = InfrastructureSource {
            role_key: Some("inrole".into()),
            ..source("infrastructureroles-new-test")
        };
        let (roles, problems) = roles_with_config_map(&source, &new, Some(&companion));
        let foobar = RoleSpec {
            flags: RoleFlags {
                createdb: true,
                ..RoleFlags::login()
            },
            ..role("new-foobar", "cGFzc3dvcmQ=", &[])
        };
        assert_eq!(
            roles,
            vec![
                foobar,
                role("new-test-role", "new-test-password", &["new-test-inrole"])
            ]
        );
        assert_eq!(problems, vec![]);
    }

    #[test]
    fn numbered_definitions() {
        type Case = (
            Vec<(&'static str, &'static str)>,
            Vec<RoleSpec>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (vec![], vec![], vec![]),
            // Zalando loses user3 here (it deletes keys while bounding the loop by the
            // Secret's size); pgop reads every definition.
            (
                vec![
                    ("user1", "a"),
                    ("password1", "pw-a-x9"),
                    ("user2", "b"),
                    ("password2", "pw-b-x9"),
                    ("user3", "c"),
                    ("password3", "pw-c-x9"),
                ],
                vec![
                    role("a", "pw-a-x9", &[]),
                    role("b", "pw-b-x9", &[]),
                    role("c", "pw-c-x9", &[]),
                ],
                vec![],
            ),
            // Reading stops at the first missing userN.
            (
                vec![
                    ("user1", "a"),
                    ("password1", "pw-a-x9"),
                    ("user3", "c"),
                    ("password3", "pw-c-x9"),
                ],
                vec![role("a", "pw-a-x9", &[])],
                vec![],
            ),
            // Missing or empty passwords and empty names are problems; names are checked
            // where all roles meet (desired).
            (
                vec![
                    ("user1", "a"),
                    ("user2", "b"),
                    ("password2", ""),
                    ("user3", ""),
                    ("password3", "pw-c-x9"),
                    ("user4", "Bad Name"),
                    ("password4", "pw-d-x9"),
                    ("user5", "e"),
                    ("password5", "pw-e-x9"),
                    ("inrole5", "monitoring"),
                ],
                vec![
                    role("Bad Name", "pw-d-x9", &[]),
                    role("e", "pw-e-x9", &["monitoring"]),
                ],
                vec!["a", "b", ""],
            ),
            // A later definition of the same name wins.
            (
                vec![
                    ("user1", "a"),
                    ("password1", "pw-first"),
                    ("user2", "a"),
                    ("password2", "pw-second"),
                ],
                vec![role("a", "pw-second", &[])],
                vec![],
            ),
        ];
        for (secret, expected, problem_roles) in cases {
            let (roles, problems) = legacy_roles(&data(&secret), None);
            assert_eq!(roles, expected, "{secret:?}");
            let names: Vec<&str> = problems.iter().map(|p| p.role.as_str()).collect();
            assert_eq!(names, problem_roles, "{problems:?}");
            assert_no_secret(
                &problems,
                &[
                    "pw-a-x9",
                    "pw-c-x9",
                    "pw-d-x9",
                    "pw-e-x9",
                    "pw-first",
                    "pw-second",
                ],
            );
        }
    }

    #[test]
    fn template_definitions_use_their_keys() {
        let source = InfrastructureSource {
            user_key: Some("name".into()),
            password_key: Some("secret".into()),
            role_key: Some("group".into()),
            template: true,
            ..source("roles")
        };
        let secret = data(&[
            ("name1", "a"),
            ("secret1", "pw-a-x9"),
            ("group1", "g"),
            ("name2", "b"),
            ("secret2", "pw-b-x9"),
            // Keys used by numbered definitions are no companion passwords.
            ("secret1x", "unused"),
        ]);
        let companion = data(&[("name1", "{}"), ("secret2", "inrole: [x]")]);
        let (roles, problems) = roles_with_config_map(&source, &secret, Some(&companion));
        assert_eq!(
            roles,
            vec![role("a", "pw-a-x9", &["g"]), role("b", "pw-b-x9", &[])]
        );
        let names: Vec<&str> = problems.iter().map(|p| p.role.as_str()).collect();
        assert_eq!(names, vec!["name1", "secret2"]);
        assert!(
            problems[0].reason.contains("in secret \"roles\""),
            "{problems:?}"
        );
        assert_no_secret(&problems, &["pw-a-x9", "pw-b-x9", "unused"]);
    }

    #[test]
    fn single_definitions() {
        let with = |f: fn(&mut InfrastructureSource)| {
            let mut s = InfrastructureSource {
                role_key: Some("inrole".into()),
                ..source("roles")
            };
            f(&mut s);
            s
        };
        type Case = (
            InfrastructureSource,
            Vec<(&'static str, &'static str)>,
            Vec<RoleSpec>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                with(|_| {}),
                vec![("user", "mon"), ("password", "pw-x9q"), ("inrole", "g")],
                vec![role("mon", "pw-x9q", &["g"])],
                vec![],
            ),
            // Defaults when the keys are missing or empty.
            (
                with(|s| {
                    s.default_user_value = Some("default_user".into());
                    s.default_role_value = Some("default_role".into());
                }),
                vec![("user", ""), ("password", "pw-x9q")],
                vec![role("default_user", "pw-x9q", &["default_role"])],
                vec![],
            ),
            (
                with(|s| s.default_role_value = Some("default_role".into())),
                vec![("user", "mon"), ("password", "pw-x9q"), ("inrole", "g")],
                vec![role("mon", "pw-x9q", &["g"])],
                vec![],
            ),
            (
                with(|s| {
                    s.user_key = None;
                    s.default_user_value = Some("fixed".into());
                }),
                vec![("password", "pw-x9q")],
                vec![role("fixed", "pw-x9q", &[])],
                vec![],
            ),
            // No password, no name.
            (
                with(|_| {}),
                vec![("user", "mon"), ("inrole", "g")],
                vec![],
                vec!["mon"],
            ),
            (
                with(|_| {}),
                vec![("user", "mon"), ("password", "")],
                vec![],
                vec!["mon"],
            ),
            (with(|_| {}), vec![("password", "pw-x9q")], vec![], vec![""]),
            // details: flags, memberships and parameters from YAML in the Secret.
            (
                with(|s| s.details = Some("details".into())),
                vec![
                    ("user", "mon"),
                    ("password", "pw-x9q"),
                    ("inrole", "g"),
                    (
                        "details",
                        "inrole: [h]\nuser_flags: [nologin, replication]\ndb_parameters: {work_mem: 4MB}",
                    ),
                ],
                vec![RoleSpec {
                    flags: RoleFlags {
                        replication: true,
                        ..RoleFlags::nologin()
                    },
                    parameters: [("work_mem".to_string(), "4MB".to_string())].into(),
                    ..role("mon", "pw-x9q", &["g", "h"])
                }],
                vec![],
            ),
            (
                with(|s| s.details = Some("details".into())),
                vec![("user", "mon"), ("password", "pw-x9q"), ("details", "inrole: |\n  x")],
                vec![],
                vec!["mon"],
            ),
        ];
        for (source, secret, expected, problem_roles) in cases {
            let (roles, problems) = roles_from(&source, &data(&secret));
            assert_eq!(roles, expected, "{source:?} {secret:?}");
            let names: Vec<&str> = problems.iter().map(|p| p.role.as_str()).collect();
            assert_eq!(names, problem_roles, "{problems:?}");
            assert_no_secret(&problems, &["pw-x9q"]);
        }
    }

    #[test]
    fn companion_descriptions() {
        let secret = data(&[
            ("json", "pw-1-x9"),
            ("yaml", "pw-2-x9"),
            ("empty", "pw-3-x9"),
            ("single", "pw-4-x9"),
            ("bad_flag", "pw-5-x9"),
            ("conflict", "pw-6-x9"),
            ("broken", "pw-7-x9"),
            ("UPPER", "pw-8-x9"),
            ("nopass", ""),
        ]);
        let companion = data(&[
            (
                "json",
                r#"{"inrole": ["a", "b"], "user_flags": ["SUPERUSER", "createRole", "inherit", "bypassrls"], "db_parameters": {"statement_timeout": 0}, "other": 1}"#,
            ),
            (
                "yaml",
                "# the docs' example\ninrole: [operator, admin]  # following roles\nuser_flags:\n- createdb\ndb_parameters:  # db parameters\n  log_statement: all\n  search_path: '\"$user\", public'\nadmin_role: admin\n",
            ),
            ("empty", ""),
            ("single", "inrole: monitoring\nuser_flags: nologin"),
            ("bad_flag", "user_flags: [createdb, fly]"),
            ("conflict", "user_flags: [login, nologin]"),
            ("broken", "inrole: [a\npassword: p7"),
            ("UPPER", "{}"),
            ("nopass", "{}"),
            ("missing", "{}"),
        ]);
        let (roles, problems) = roles_with_config_map(&source("roles"), &secret, Some(&companion));
        let expected = vec![
            role("UPPER", "pw-8-x9", &[]),
            role("empty", "pw-3-x9", &[]),
            RoleSpec {
                flags: RoleFlags {
                    superuser: true,
                    createrole: true,
                    bypassrls: true,
                    ..RoleFlags::login()
                },
                parameters: [("statement_timeout".to_string(), "0".to_string())].into(),
                ..role("json", "pw-1-x9", &["a", "b"])
            },
            RoleSpec {
                flags: RoleFlags::nologin(),
                ..role("single", "pw-4-x9", &["monitoring"])
            },
            RoleSpec {
                flags: RoleFlags {
                    createdb: true,
                    ..RoleFlags::login()
                },
                parameters: [
                    ("log_statement".to_string(), "all".to_string()),
                    ("search_path".to_string(), "\"$user\", public".to_string()),
                ]
                .into(),
                ..role("yaml", "pw-2-x9", &["admin", "operator"])
            },
        ];
        assert_eq!(roles, expected);
        let found: Vec<(&str, &str)> = problems
            .iter()
            .map(|p| (p.role.as_str(), p.reason.as_str()))
            .collect();
        let expect = [
            // The Secret itself defines no role (no key "user").
            ("", "has no name"),
            ("bad_flag", "\"fly\""),
            ("broken", "not valid"),
            ("conflict", "conflicting flags"),
            ("missing", "no password"),
            ("nopass", "no password"),
        ];
        assert_eq!(found.len(), expect.len(), "{found:?}");
        for ((role, reason), (want_role, want_reason)) in found.iter().zip(expect) {
            assert_eq!(*role, want_role);
            assert!(reason.contains(want_reason), "{role}: {reason}");
        }
        assert_no_secret(
            &problems,
            &[
                "pw-1-x9", "pw-2-x9", "pw-3-x9", "pw-4-x9", "pw-5-x9", "pw-6-x9", "pw-7-x9",
                "pw-8-x9",
            ],
        );
    }

    #[test]
    fn companion_entries_override_secret_definitions() {
        let secret = data(&[("user1", "mon"), ("password1", "old"), ("mon", "new")]);
        let companion = data(&[("mon", "inrole: [x]")]);
        let (roles, problems) = legacy_roles(&secret, Some(&companion));
        assert_eq!(roles, vec![role("mon", "new", &["x"])]);
        assert_eq!(problems, vec![]);
    }

    #[test]
    fn merging_sources_keeps_the_last_definition() {
        let merged = merge([
            vec![role("a", "1", &[]), role("b", "1", &[])],
            vec![role("a", "2", &["x"])],
        ]);
        assert_eq!(merged, vec![role("a", "2", &["x"]), role("b", "1", &[])]);
    }
}
