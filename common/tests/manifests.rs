//! The deployment manifests fit together: every YAML document under `manifests/` and
//! `deploy/` parses into its Kubernetes type without losing a field, the operator ConfigMap
//! is one pgop reads without unknown keys, the OperatorConfiguration CRD has Zalando's names
//! and a structural schema, every binding points at a role and a
//! ServiceAccount that exist, each process holds the permissions it needs (the worker all of
//! `postgres-pod`'s, or Kubernetes would refuse its RoleBindings), `deploy/base/kustomization.yaml`
//! lists existing files and all of them, the local overlay renders the same objects but for the
//! image and the PodDisruptionBudgets' API version, and the Deployments, Services and the Dockerfile
//! agree on names, ports and binaries.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgop_common::config::{from_config_map, WatchedNamespaces, KNOWN_KEYS};
use pgop_common::crd::Postgresql;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// The operator's ConfigMap, as Zalando names it (the watcher's `config_map_name`).
const OPERATOR_CONFIGMAP: &str = "postgres-operator";
/// The OperatorConfiguration object of Zalando's sample
/// (`postgresql-operator-default-configuration.yaml`), the one the watcher's RBAC names.
const OPERATOR_CONFIGURATION: &str = "postgresql-operator-default-configuration";
const OPERATOR_CONFIGURATION_CRD: &str = "manifests/operatorconfiguration.crd.yaml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A path relative to the repository root, for messages and lookups.
fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

// ---- loading ---------------------------------------------------------------------------

// A few dozen objects, loaded once: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Deployment(Box<Deployment>),
    Service(Service),
    CustomResourceDefinition(Box<CustomResourceDefinition>),
    Postgresql(Box<Postgresql>),
    PodDisruptionBudget(PodDisruptionBudget),
}

#[derive(Debug)]
struct Doc {
    /// Relative to the repository root.
    file: String,
    /// 0-based position in a multi-document file.
    index: usize,
    object: Object,
}

impl Doc {
    fn at(&self) -> String {
        format!("{} (document {})", self.file, self.index + 1)
    }
}

struct Manifests {
    docs: Vec<Doc>,
    /// `deploy/base/kustomization.yaml`, untyped.
    kustomization: serde_yaml::Value,
}

impl Manifests {
    fn of<'a, T>(&'a self, pick: impl Fn(&'a Object) -> Option<&'a T>) -> Vec<(&'a Doc, &'a T)> {
        self.docs
            .iter()
            .filter_map(|d| pick(&d.object).map(|o| (d, o)))
            .collect()
    }

    fn service_accounts(&self) -> Vec<(&Doc, &ServiceAccount)> {
        self.of(|o| match o {
            Object::ServiceAccount(x) => Some(x),
            _ => None,
        })
    }
    fn cluster_roles(&self) -> Vec<(&Doc, &ClusterRole)> {
        self.of(|o| match o {
            Object::ClusterRole(x) => Some(x),
            _ => None,
        })
    }
    fn cluster_role_bindings(&self) -> Vec<(&Doc, &ClusterRoleBinding)> {
        self.of(|o| match o {
            Object::ClusterRoleBinding(x) => Some(x),
            _ => None,
        })
    }
    fn roles(&self) -> Vec<(&Doc, &Role)> {
        self.of(|o| match o {
            Object::Role(x) => Some(x),
            _ => None,
        })
    }
    fn role_bindings(&self) -> Vec<(&Doc, &RoleBinding)> {
        self.of(|o| match o {
            Object::RoleBinding(x) => Some(x),
            _ => None,
        })
    }
    fn crds(&self) -> Vec<(&Doc, &CustomResourceDefinition)> {
        self.of(|o| match o {
            Object::CustomResourceDefinition(x) => Some(&**x),
            _ => None,
        })
    }
    fn config_maps(&self) -> Vec<(&Doc, &ConfigMap)> {
        self.of(|o| match o {
            Object::ConfigMap(x) => Some(x),
            _ => None,
        })
    }
    fn deployments(&self) -> Vec<(&Doc, &Deployment)> {
        self.of(|o| match o {
            Object::Deployment(x) => Some(x.as_ref()),
            _ => None,
        })
    }
    fn services(&self) -> Vec<(&Doc, &Service)> {
        self.of(|o| match o {
            Object::Service(x) => Some(x),
            _ => None,
        })
    }

    /// The namespace every namespaced object of the installation ends up in.
    fn namespace(&self) -> String {
        self.kustomization["namespace"]
            .as_str()
            .expect("deploy/base/kustomization.yaml sets `namespace`")
            .to_string()
    }

    /// Where a namespaced object lands: its own namespace, else the kustomization's.
    fn namespace_of(&self, namespace: &Option<String>) -> String {
        namespace.clone().unwrap_or_else(|| self.namespace())
    }

    fn cluster_role(&self, name: &str) -> &ClusterRole {
        let found: Vec<_> = self
            .cluster_roles()
            .into_iter()
            .filter(|(_, r)| r.metadata.name.as_deref() == Some(name))
            .collect();
        assert_eq!(found.len(), 1, "exactly one ClusterRole {name:?}");
        found[0].1
    }

    fn service_account(&self, name: &str) -> (&Doc, &ServiceAccount) {
        let found: Vec<_> = self
            .service_accounts()
            .into_iter()
            .filter(|(_, sa)| sa.metadata.name.as_deref() == Some(name))
            .collect();
        assert_eq!(found.len(), 1, "exactly one ServiceAccount {name:?}");
        found[0]
    }
}

/// Every `.yaml`/`.yml` file below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
    out
}

fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// Every document of a (multi-document) YAML text, as JSON values; empty documents (only
/// comments, or a trailing `---`) are left out.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// `wanted` is contained in `got`: every field it sets, `got` has with the same value (numbers
/// compare by value, so `1` and `1.0` are equal). `got` may have more, e.g. defaults.
fn contained(wanted: &Value, got: &Value, path: &str) -> Result<(), String> {
    match (wanted, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (key, w_value) in w {
                if w_value.is_null() {
                    continue;
                }
                let at = format!("{path}.{key}");
                match g.get(key) {
                    Some(g_value) => contained(w_value, g_value, &at)?,
                    None => return Err(format!("{at} is not a field of the type (typo?)")),
                }
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Err(format!("{path}: {} items became {}", w.len(), g.len()));
            }
            for (i, (w_item, g_item)) in w.iter().zip(g).enumerate() {
                contained(w_item, g_item, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(w), Value::Number(g)) if w.as_f64() == g.as_f64() => Ok(()),
        (w, g) if w == g => Ok(()),
        (w, g) => Err(format!("{path}: {w} became {g}")),
    }
}

/// Parses `value` as `T`, checks its `apiVersion`, and that serializing it again keeps every
/// field of the YAML (k8s-openapi ignores unknown fields, which would hide a misspelt one).
fn typed<T>(value: &Value) -> Result<T, String>
where
    T: DeserializeOwned + Serialize + k8s_openapi::Resource,
{
    let api_version = value["apiVersion"].as_str().unwrap_or_default();
    if api_version != T::API_VERSION {
        return Err(format!(
            "{} must be apiVersion {:?}, not {api_version:?}",
            T::KIND,
            T::API_VERSION
        ));
    }
    let object: T =
        serde_json::from_value(value.clone()).map_err(|e| format!("{}: {e}", T::KIND))?;
    let again = serde_json::to_value(&object).unwrap();
    contained(value, &again, T::KIND)?;
    Ok(object)
}

fn parse_object(value: &Value) -> Result<Object, String> {
    let kind = value["kind"].as_str().unwrap_or_default();
    Ok(match kind {
        "Namespace" => Object::Namespace(typed(value)?),
        "ServiceAccount" => Object::ServiceAccount(typed(value)?),
        "ClusterRole" => Object::ClusterRole(typed(value)?),
        "ClusterRoleBinding" => Object::ClusterRoleBinding(typed(value)?),
        "Role" => Object::Role(typed(value)?),
        "RoleBinding" => Object::RoleBinding(typed(value)?),
        "ConfigMap" => Object::ConfigMap(typed(value)?),
        "Deployment" => Object::Deployment(Box::new(typed(value)?)),
        "Service" => Object::Service(typed(value)?),
        "CustomResourceDefinition" => Object::CustomResourceDefinition(Box::new(typed(value)?)),
        "PodDisruptionBudget" => Object::PodDisruptionBudget(typed(value)?),
        // Example clusters; tests/crd.rs checks that they round-trip.
        "postgresql" => Object::Postgresql(Box::new(
            serde_json::from_value(value.clone()).map_err(|e| format!("postgresql: {e}"))?,
        )),
        other => {
            return Err(format!(
                "kind {other:?} is not one this test knows; add it to parse_object"
            ))
        }
    })
}

fn load() -> Result<Manifests, Vec<String>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    let mut kustomization = None;
    for dir in ["manifests", "deploy"] {
        for path in yaml_files(&root().join(dir)) {
            let file = rel(&path);
            let text = std::fs::read_to_string(&path).unwrap();
            if is_kustomization(&path) {
                if file == "deploy/base/kustomization.yaml" {
                    match serde_yaml::from_str::<serde_yaml::Value>(&text) {
                        Ok(k) => kustomization = Some(k),
                        Err(e) => errors.push(format!("{file}: {e}")),
                    }
                }
                continue;
            }
            let values = match documents(&text) {
                Ok(values) => values,
                Err(e) => {
                    errors.push(format!("{file}: {e}"));
                    continue;
                }
            };
            if values.is_empty() {
                errors.push(format!("{file}: no YAML document"));
            }
            for (index, value) in values.iter().enumerate() {
                let at = format!("{file} (document {})", index + 1);
                if value["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty()
                {
                    errors.push(format!("{at}: no metadata.name"));
                    continue;
                }
                match parse_object(value) {
                    Ok(object) => docs.push(Doc {
                        file: file.clone(),
                        index,
                        object,
                    }),
                    Err(e) => errors.push(format!("{at}: {e}")),
                }
            }
        }
    }
    let Some(kustomization) = kustomization else {
        errors.push("deploy/base/kustomization.yaml is missing".into());
        return Err(errors);
    };
    if errors.is_empty() {
        Ok(Manifests {
            docs,
            kustomization,
        })
    } else {
        Err(errors)
    }
}

/// The manifests, loaded once; a parse failure fails every test that needs them.
fn manifests() -> &'static Manifests {
    static LOADED: OnceLock<Result<Manifests, Vec<String>>> = OnceLock::new();
    match LOADED.get_or_init(load) {
        Ok(m) => m,
        Err(errors) => panic!("manifests do not parse:\n  {}", errors.join("\n  ")),
    }
}

// ---- RBAC --------------------------------------------------------------------------------

/// One permission: API group, resource (with `/subresource`), verb, and the object name when
/// the request names one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Permission {
    group: String,
    resource: String,
    verb: String,
    name: Option<String>,
}

fn perm(group: &str, resource: &str, verb: &str) -> Permission {
    Permission {
        group: group.into(),
        resource: resource.into(),
        verb: verb.into(),
        name: None,
    }
}

/// Whether `rule` allows `p`, as Kubernetes' RBAC authorizer decides it.
fn allows(rule: &PolicyRule, p: &Permission) -> bool {
    let any = |list: &Option<Vec<String>>, want: &str| {
        list.iter()
            .flatten()
            .any(|item| item == "*" || item == want)
    };
    let resource_ok = rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == p.resource
            || (r.ends_with("/*") && p.resource.starts_with(&r[..r.len() - 1]))
    });
    let name_ok = match (&rule.resource_names, &p.name) {
        (None, _) => true,
        (Some(names), _) if names.is_empty() => true,
        (Some(names), Some(name)) => names.contains(name),
        (Some(_), None) => false,
    };
    any(&rule.api_groups, &p.group)
        && resource_ok
        && rule.verbs.iter().any(|v| v == "*" || *v == p.verb)
        && name_ok
}

/// Every permission a role's rules spell out (the cartesian product of each rule).
fn permissions(rules: &[PolicyRule]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let names: Vec<Option<String>> = match &rule.resource_names {
            Some(names) if !names.is_empty() => names.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        out.insert(Permission {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

fn is_service_account(subject: &Subject, name: &str, namespace: &str) -> bool {
    subject.kind == "ServiceAccount"
        && subject.name == name
        && subject.namespace.as_deref() == Some(namespace)
}

impl Manifests {
    /// The rules a role reference resolves to (`namespace`: the binding's, for a Role).
    fn rules_of(&self, role_ref: &RoleRef, namespace: Option<&str>) -> Vec<PolicyRule> {
        match role_ref.kind.as_str() {
            "ClusterRole" => self
                .cluster_role(&role_ref.name)
                .rules
                .clone()
                .unwrap_or_default(),
            "Role" => self
                .roles()
                .into_iter()
                .filter(|(_, r)| {
                    r.metadata.name.as_deref() == Some(role_ref.name.as_str())
                        && Some(self.namespace_of(&r.metadata.namespace).as_str()) == namespace
                })
                .flat_map(|(_, r)| r.rules.clone().unwrap_or_default())
                .collect(),
            other => panic!("roleRef kind {other:?}"),
        }
    }

    /// Whether the ServiceAccount `name` (in the installation's namespace) may do `p` in
    /// `namespace` (None: cluster-wide, e.g. a list across all namespaces).
    fn can(&self, name: &str, namespace: Option<&str>, p: &Permission) -> bool {
        let own = self.namespace();
        let cluster_wide = self
            .cluster_role_bindings()
            .into_iter()
            .filter(|(_, b)| {
                b.subjects
                    .iter()
                    .flatten()
                    .any(|s| is_service_account(s, name, &own))
            })
            .flat_map(|(_, b)| self.rules_of(&b.role_ref, None));
        let in_namespace = self
            .role_bindings()
            .into_iter()
            .filter(|(_, b)| {
                let at = self.namespace_of(&b.metadata.namespace);
                Some(at.as_str()) == namespace
                    && b.subjects
                        .iter()
                        .flatten()
                        .any(|s| is_service_account(s, name, &own))
            })
            .flat_map(|(_, b)| {
                let at = self.namespace_of(&b.metadata.namespace);
                self.rules_of(&b.role_ref, Some(&at))
            });
        cluster_wide
            .chain(in_namespace)
            .collect::<Vec<_>>()
            .iter()
            .any(|rule| allows(rule, p))
    }

    fn missing(&self, name: &str, namespace: Option<&str>, wanted: &[Permission]) -> Vec<String> {
        wanted
            .iter()
            .filter(|p| !self.can(name, namespace, p))
            .map(|p| format!("{p:?}"))
            .collect()
    }
}

fn verbs(group: &str, resource: &str, verbs: &[&str]) -> Vec<Permission> {
    verbs.iter().map(|v| perm(group, resource, v)).collect()
}

// ---- tests: parsing ------------------------------------------------------------------------

#[test]
fn every_document_parses_into_its_kubernetes_type() {
    let m = manifests();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for doc in &m.docs {
        let kind = match &doc.object {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::CustomResourceDefinition(_) => "CustomResourceDefinition",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
            Object::Postgresql(p) => {
                assert!(p.spec.number_of_instances > 0, "{}", doc.at());
                "postgresql"
            }
        };
        *kinds.entry(kind).or_default() += 1;
    }
    // Guards against a walk that silently finds nothing.
    for (kind, at_least) in [
        ("ServiceAccount", 4),
        ("ClusterRole", 3),
        ("ClusterRoleBinding", 2),
        ("ConfigMap", 1),
        ("Deployment", 4),
        ("Service", 3),
        ("CustomResourceDefinition", 2),
        ("Namespace", 1),
        ("postgresql", 1),
    ] {
        let found = kinds.get(kind).copied().unwrap_or(0);
        assert!(
            found >= at_least,
            "{kind}: {found} found, expected at least {at_least} ({kinds:?})"
        );
    }
}

#[test]
fn no_object_is_defined_twice() {
    let m = manifests();
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for doc in &m.docs {
        let (kind, meta, namespaced) = match &doc.object {
            Object::Namespace(o) => ("Namespace", &o.metadata, false),
            Object::ServiceAccount(o) => ("ServiceAccount", &o.metadata, true),
            Object::ClusterRole(o) => ("ClusterRole", &o.metadata, false),
            Object::ClusterRoleBinding(o) => ("ClusterRoleBinding", &o.metadata, false),
            Object::Role(o) => ("Role", &o.metadata, true),
            Object::RoleBinding(o) => ("RoleBinding", &o.metadata, true),
            Object::ConfigMap(o) => ("ConfigMap", &o.metadata, true),
            Object::Deployment(o) => ("Deployment", &o.metadata, true),
            Object::Service(o) => ("Service", &o.metadata, true),
            Object::CustomResourceDefinition(o) => ("CustomResourceDefinition", &o.metadata, false),
            Object::PodDisruptionBudget(o) => ("PodDisruptionBudget", &o.metadata, true),
            // examples, applied one at a time into a namespace of the user's choice
            Object::Postgresql(_) => continue,
        };
        let namespace = if namespaced {
            m.namespace_of(&meta.namespace)
        } else {
            assert!(
                meta.namespace.is_none(),
                "{}: {kind} is cluster-scoped, yet has a namespace",
                doc.at()
            );
            String::new()
        };
        let key = (kind.to_string(), namespace, meta.name.clone().unwrap());
        if let Some(first) = seen.insert(key.clone(), doc.at()) {
            panic!("{key:?} is defined in {first} and again in {}", doc.at());
        }
    }
}

// ---- tests: the operator ConfigMap ---------------------------------------------------------

#[test]
fn operator_configmap_parses_without_unknown_keys() {
    let m = manifests();
    let in_file: Vec<_> = m
        .config_maps()
        .into_iter()
        .filter(|(d, _)| d.file == "manifests/configmap.yaml")
        .collect();
    assert_eq!(
        in_file.len(),
        1,
        "manifests/configmap.yaml holds one ConfigMap"
    );
    let (_, cm) = in_file[0];
    assert_eq!(cm.metadata.name.as_deref(), Some(OPERATOR_CONFIGMAP));

    let data = cm.data.as_ref().expect("the ConfigMap has data");
    let unknown: Vec<&String> = data
        .keys()
        .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
        .collect();
    assert!(unknown.is_empty(), "keys pgop does not know: {unknown:?}");

    let config = from_config_map(cm).expect("pgop reads manifests/configmap.yaml");
    assert_eq!(config.unknown_keys, Vec::<String>::new());
    assert!(
        !config.kubernetes_use_configmaps,
        "Zalando's default: Endpoints"
    );
    assert_eq!(
        config.watched_namespaces(&m.namespace(), None),
        WatchedNamespaces::All
    );

    // A worker binds the pods' ServiceAccount to the ClusterRole of the same name (the
    // RoleBinding of Zalando's pod_service_account_role_binding_definition default).
    let role = m.cluster_role(&config.pod_service_account_name);
    assert!(!role.rules.as_deref().unwrap_or_default().is_empty());
}

// ---- tests: the OperatorConfiguration CRD --------------------------------------------------------

fn operator_configuration_crd(m: &Manifests) -> (&Doc, &CustomResourceDefinition) {
    let in_file: Vec<_> = m
        .crds()
        .into_iter()
        .filter(|(d, _)| d.file == OPERATOR_CONFIGURATION_CRD)
        .collect();
    assert_eq!(
        in_file.len(),
        1,
        "{OPERATOR_CONFIGURATION_CRD} holds one CustomResourceDefinition"
    );
    in_file[0]
}

/// Where `schema` breaks the rules apiextensions.k8s.io/v1 holds a structural schema to (as
/// Kubernetes 1.20 checks them): a type on every node but those that preserve unknown fields
/// or are int-or-string, `properties` and `items` only on objects and arrays, no
/// `additionalProperties` beside `properties` or with preserved unknown fields, and nothing
/// but a type for `metadata` at the root.
fn structural_problems(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    let kind = schema.type_.as_deref().unwrap_or_default();
    let preserves = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    if kind.is_empty() && !preserves && schema.x_kubernetes_int_or_string != Some(true) {
        out.push(format!("{path}: no type"));
    }
    let properties = schema.properties.as_ref().filter(|p| !p.is_empty());
    if properties.is_some() && kind != "object" {
        out.push(format!("{path}: properties on a {kind:?}"));
    }
    if schema.items.is_some() && kind != "array" {
        out.push(format!("{path}: items on a {kind:?}"));
    }
    if kind == "array" && schema.items.is_none() {
        out.push(format!("{path}: an array without items"));
    }
    if schema.additional_properties.is_some() && (properties.is_some() || preserves) {
        out.push(format!(
            "{path}: additionalProperties beside properties or preserved unknown fields"
        ));
    }
    for forbidden in [
        schema.all_of.is_some(),
        schema.any_of.is_some(),
        schema.one_of.is_some(),
        schema.not.is_some(),
    ] {
        if forbidden {
            out.push(format!(
                "{path}: allOf/anyOf/oneOf/not are left out of this CRD"
            ));
        }
    }
    for (name, property) in properties.into_iter().flatten() {
        let at = format!("{path}.{name}");
        if path.is_empty() && name == "metadata" {
            let only_type = JSONSchemaProps {
                type_: Some("object".into()),
                ..Default::default()
            };
            let mut stripped = property.clone();
            stripped.description = None;
            if stripped != only_type {
                out.push(format!("{at}: only `type: object` is allowed"));
            }
            continue;
        }
        structural_problems(property, &at, out);
    }
    match &schema.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => {
            structural_problems(item, &format!("{path}[]"), out)
        }
        Some(JSONSchemaPropsOrArray::Schemas(_)) => {
            out.push(format!("{path}: items must be one schema"))
        }
        None => {}
    }
}

#[test]
fn operator_configuration_crd_has_zalandos_names_and_a_structural_schema() {
    let m = manifests();
    let (doc, crd) = operator_configuration_crd(m);
    let at = doc.at();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("operatorconfigurations.acid.zalan.do"),
        "{at}"
    );
    let spec = &crd.spec;
    assert_eq!(spec.group, "acid.zalan.do");
    assert_eq!(spec.scope, "Namespaced");
    let names = &spec.names;
    assert_eq!(
        (
            names.kind.as_str(),
            names.plural.as_str(),
            names.singular.as_deref(),
            names.list_kind.as_deref()
        ),
        (
            "OperatorConfiguration",
            "operatorconfigurations",
            Some("operatorconfiguration"),
            Some("OperatorConfigurationList")
        )
    );
    assert_eq!(names.short_names.as_deref(), Some(&["opconfig".into()][..]));
    assert_eq!(names.categories.as_deref(), Some(&["all".into()][..]));
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some(format!("{}.{}", names.plural, spec.group).as_str()),
        "Kubernetes wants the name <plural>.<group>"
    );

    assert_eq!(spec.versions.len(), 1);
    let version = &spec.versions[0];
    assert_eq!(
        (version.name.as_str(), version.served, version.storage),
        ("v1", true, true)
    );
    for column in version.additional_printer_columns.iter().flatten() {
        assert!(
            ["integer", "number", "string", "boolean", "date"].contains(&column.type_.as_str()),
            "{at}: column {} has type {:?}",
            column.name,
            column.type_
        );
        assert!(column.json_path.starts_with('.'), "{at}: {}", column.name);
    }

    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("{at}: no openAPIV3Schema (apiextensions v1 requires one)"));
    let mut problems = Vec::new();
    structural_problems(schema, "", &mut problems);
    assert!(problems.is_empty(), "{at}: not structural: {problems:?}");
    assert_eq!(schema.type_.as_deref(), Some("object"));
    assert_eq!(
        schema.x_kubernetes_preserve_unknown_fields, None,
        "only `configuration` is schemaless: other top-level fields are pruned"
    );
    let configuration = &schema.properties.as_ref().unwrap()["configuration"];
    assert_eq!(configuration.type_.as_deref(), Some("object"));
    assert_eq!(
        configuration.x_kubernetes_preserve_unknown_fields,
        Some(true)
    );
    assert!(
        configuration.properties.is_none() && configuration.additional_properties.is_none(),
        "`configuration` is schemaless: pgop checks its keys"
    );
    assert_eq!(
        schema.required.as_deref(),
        Some(&["configuration".to_string()][..])
    );

    // Zalando's sample object fits: its top-level fields are the schema's.
    let Some(corpus) = pgop_common::corpus::zalando_corpus(
        "operator_configuration_crd_has_zalandos_names_and_a_structural_schema (Zalando's sample)",
    ) else {
        return;
    };
    let sample_path = corpus.join("postgresql-operator-default-configuration.yaml");
    let sample: Value = serde_yaml::from_str(&std::fs::read_to_string(&sample_path).unwrap())
        .expect("Zalando's sample OperatorConfiguration");
    assert_eq!(sample["kind"], "OperatorConfiguration");
    assert_eq!(
        sample["apiVersion"],
        format!("{}/{}", spec.group, version.name)
    );
    assert_eq!(sample["metadata"]["name"], OPERATOR_CONFIGURATION);
    let declared = schema.properties.as_ref().unwrap();
    for field in sample.as_object().unwrap().keys() {
        assert!(declared.contains_key(field), "{field} would be pruned");
    }
    assert!(sample["configuration"].is_object());
}

// ---- tests: RBAC ------------------------------------------------------------------------------

#[test]
fn bindings_reference_roles_and_service_accounts_that_exist() {
    let m = manifests();
    let service_accounts: BTreeSet<(String, String)> = m
        .service_accounts()
        .into_iter()
        .map(|(_, sa)| {
            (
                m.namespace_of(&sa.metadata.namespace),
                sa.metadata.name.clone().unwrap(),
            )
        })
        .collect();
    let cluster_roles: BTreeSet<String> = m
        .cluster_roles()
        .into_iter()
        .map(|(_, r)| r.metadata.name.clone().unwrap())
        .collect();
    let roles: BTreeSet<(String, String)> = m
        .roles()
        .into_iter()
        .map(|(_, r)| {
            (
                m.namespace_of(&r.metadata.namespace),
                r.metadata.name.clone().unwrap(),
            )
        })
        .collect();

    let check_subjects = |at: String, subjects: &Option<Vec<Subject>>| {
        let subjects = subjects.as_deref().unwrap_or_default();
        assert!(!subjects.is_empty(), "{at}: no subjects");
        for s in subjects {
            assert_eq!(s.kind, "ServiceAccount", "{at}: subject {s:?}");
            let namespace = s
                .namespace
                .clone()
                .unwrap_or_else(|| panic!("{at}: ServiceAccount subject without a namespace"));
            assert!(
                service_accounts.contains(&(namespace.clone(), s.name.clone())),
                "{at}: ServiceAccount {namespace}/{} is not defined (have {service_accounts:?})",
                s.name
            );
        }
    };

    let mut bindings = 0;
    for (doc, b) in m.cluster_role_bindings() {
        assert_eq!(b.role_ref.api_group, RBAC_GROUP, "{}", doc.at());
        assert_eq!(b.role_ref.kind, "ClusterRole", "{}", doc.at());
        assert!(
            cluster_roles.contains(&b.role_ref.name),
            "{}: ClusterRole {:?} is not defined",
            doc.at(),
            b.role_ref.name
        );
        check_subjects(doc.at(), &b.subjects);
        bindings += 1;
    }
    for (doc, b) in m.role_bindings() {
        let namespace = m.namespace_of(&b.metadata.namespace);
        assert_eq!(b.role_ref.api_group, RBAC_GROUP, "{}", doc.at());
        match b.role_ref.kind.as_str() {
            "ClusterRole" => assert!(cluster_roles.contains(&b.role_ref.name), "{}", doc.at()),
            "Role" => assert!(
                roles.contains(&(namespace.clone(), b.role_ref.name.clone())),
                "{}: Role {namespace}/{} is not defined",
                doc.at(),
                b.role_ref.name
            ),
            other => panic!("{}: roleRef kind {other:?}", doc.at()),
        }
        check_subjects(doc.at(), &b.subjects);
        bindings += 1;
    }
    assert!(bindings >= 3, "only {bindings} bindings found");

    // The RBAC files put their ServiceAccounts where the kustomization puts everything else,
    // so that they also work when applied on their own.
    for (doc, sa) in m.service_accounts() {
        assert_eq!(
            sa.metadata.namespace.as_deref(),
            Some(m.namespace().as_str()),
            "{}: ServiceAccount namespace",
            doc.at()
        );
    }
}

#[test]
fn worker_holds_every_permission_of_postgres_pod() {
    let m = manifests();
    let pod_role = m.cluster_role("postgres-pod");
    let pod_permissions = permissions(pod_role.rules.as_deref().unwrap_or_default());
    // Zalando's role for Patroni's Kubernetes DCS, either kind of DCS object.
    for p in verbs(
        "",
        "endpoints",
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
    )
    .into_iter()
    .chain(verbs(
        "",
        "configmaps",
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ],
    ))
    .chain(verbs(
        "",
        "pods",
        &["get", "list", "patch", "update", "watch"],
    ))
    .chain(verbs("", "services", &["create"]))
    {
        assert!(pod_permissions.contains(&p), "postgres-pod lacks {p:?}");
    }

    // The worker's own ClusterRole must cover the role rule by rule ...
    let worker_rules = m
        .cluster_role("pgop-worker")
        .rules
        .clone()
        .unwrap_or_default();
    let uncovered: Vec<&Permission> = pod_permissions
        .iter()
        .filter(|p| !worker_rules.iter().any(|rule| allows(rule, p)))
        .collect();
    assert!(
        uncovered.is_empty(),
        "pgop-worker cannot bind postgres-pod, it lacks {uncovered:?}"
    );
    // ... and the worker's ServiceAccount must hold it in any namespace, through its bindings.
    let wanted: Vec<Permission> = pod_permissions.into_iter().collect();
    let missing = m.missing("pgop-worker", Some("team-a"), &wanted);
    assert!(missing.is_empty(), "pgop-worker lacks {missing:?}");
}

#[test]
fn worker_may_do_what_reconciling_a_cluster_takes() {
    let m = manifests();
    let all = [
        "get", "list", "watch", "create", "patch", "update", "delete",
    ];
    let wanted: Vec<Permission> = [
        verbs(
            "acid.zalan.do",
            "postgresqls",
            &["get", "list", "watch", "patch", "update"],
        ),
        verbs(
            "acid.zalan.do",
            "postgresqls/status",
            &["get", "patch", "update"],
        ),
        verbs("apps", "statefulsets", &all),
        verbs("", "services", &[&all[..], &["deletecollection"]].concat()),
        verbs("", "endpoints", &[&all[..], &["deletecollection"]].concat()),
        verbs(
            "",
            "secrets",
            &[
                "get",
                "list",
                "create",
                "patch",
                "update",
                "delete",
                "deletecollection",
            ],
        ),
        verbs(
            "",
            "persistentvolumeclaims",
            &[
                "get",
                "list",
                "patch",
                "update",
                "delete",
                "deletecollection",
            ],
        ),
        verbs("", "persistentvolumes", &["get", "list"]),
        verbs(
            "",
            "configmaps",
            &[
                "get",
                "list",
                "create",
                "patch",
                "update",
                "delete",
                "deletecollection",
            ],
        ),
        verbs(
            "",
            "pods",
            &["get", "list", "watch", "patch", "update", "delete"],
        ),
        verbs("", "serviceaccounts", &["get", "create"]),
        verbs(RBAC_GROUP, "rolebindings", &["get", "create"]),
        verbs(
            "policy",
            "poddisruptionbudgets",
            &["get", "create", "patch", "update", "delete"],
        ),
        verbs(
            "batch",
            "cronjobs",
            &["get", "list", "create", "patch", "update", "delete"],
        ),
        verbs("", "events", &["create", "patch", "update"]),
        verbs("events.k8s.io", "events", &["create", "patch", "update"]),
    ]
    .concat();
    let missing = m.missing("pgop-worker", Some("team-a"), &wanted);
    assert!(missing.is_empty(), "pgop-worker lacks {missing:?}");
    // Workers change clusters, never the CRD or RBAC roles themselves.
    for p in [
        perm(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "create",
        ),
        perm(RBAC_GROUP, "clusterroles", "create"),
        perm(RBAC_GROUP, "clusterrolebindings", "create"),
        perm("acid.zalan.do", "postgresqls", "delete"),
    ] {
        assert!(!m.can("pgop-worker", None, &p), "pgop-worker may {p:?}");
    }
}

#[test]
fn watcher_may_watch_clusters_pods_and_only_its_operator_configuration() {
    let m = manifests();
    let read = ["get", "list", "watch"];
    let cluster_wide: Vec<Permission> = [
        verbs("acid.zalan.do", "postgresqls", &read),
        verbs("", "pods", &read),
        verbs("", "namespaces", &read),
        verbs("", "events", &["create", "patch"]),
    ]
    .concat();
    let missing = m.missing("pgop-watcher", None, &cluster_wide);
    assert!(missing.is_empty(), "pgop-watcher lacks {missing:?}");

    let own = m.namespace();
    let config: Vec<Permission> = read
        .iter()
        .map(|v| Permission {
            name: Some(OPERATOR_CONFIGMAP.into()),
            ..perm("", "configmaps", v)
        })
        .collect();
    let missing = m.missing("pgop-watcher", Some(&own), &config);
    assert!(
        missing.is_empty(),
        "pgop-watcher cannot read its ConfigMap: {missing:?}"
    );

    // The OperatorConfiguration, by name, as the CRD names its group and resource.
    let (_, crd) = operator_configuration_crd(m);
    let (group, plural) = (crd.spec.group.as_str(), crd.spec.names.plural.as_str());
    let operator_configuration: Vec<Permission> = read
        .iter()
        .map(|v| Permission {
            name: Some(OPERATOR_CONFIGURATION.into()),
            ..perm(group, plural, v)
        })
        .collect();
    let missing = m.missing("pgop-watcher", Some(&own), &operator_configuration);
    assert!(
        missing.is_empty(),
        "pgop-watcher cannot read its OperatorConfiguration: {missing:?}"
    );
    for (namespace, p) in [
        (Some(own.as_str()), perm(group, plural, "list")),
        (Some("team-a"), operator_configuration[0].clone()),
        (None, perm(group, plural, "list")),
        (
            Some(own.as_str()),
            Permission {
                name: Some(OPERATOR_CONFIGURATION.into()),
                ..perm(group, plural, "patch")
            },
        ),
    ] {
        assert!(
            !m.can("pgop-watcher", namespace, &p),
            "pgop-watcher may {p:?} in {namespace:?}"
        );
    }

    // It only reads: no writes to what it watches, and no other ConfigMap or any Secret.
    for (namespace, p) in [
        (Some(own.as_str()), perm("", "configmaps", "list")),
        (Some("team-a"), perm("", "configmaps", "get")),
        (Some("team-a"), perm("", "secrets", "get")),
        (None, perm("acid.zalan.do", "postgresqls", "patch")),
        (None, perm("", "pods", "delete")),
        (None, perm("apps", "statefulsets", "create")),
    ] {
        assert!(
            !m.can("pgop-watcher", namespace, &p),
            "pgop-watcher may {p:?} in {namespace:?}"
        );
    }
}

#[test]
fn api_gateway_has_no_kubernetes_access() {
    let m = manifests();
    let (name, file) = ("pgop-api-gateway", "manifests/rbac/api-gateway.yaml");
    let in_file: Vec<&Doc> = m.docs.iter().filter(|d| d.file == file).collect();
    assert_eq!(in_file.len(), 1, "{file}: a ServiceAccount only");
    let (doc, sa) = m.service_account(name);
    assert_eq!(doc.file, file);
    assert_eq!(
        sa.automount_service_account_token,
        Some(false),
        "{name}: no API token"
    );
    let bound = m
        .cluster_role_bindings()
        .iter()
        .flat_map(|(_, b)| b.subjects.iter().flatten())
        .chain(
            m.role_bindings()
                .iter()
                .flat_map(|(_, b)| b.subjects.iter().flatten()),
        )
        .any(|s| s.kind == "ServiceAccount" && s.name == name);
    assert!(!bound, "{name} is bound to a role");
}

#[test]
fn the_scheduler_may_hold_its_lease_and_nothing_else() {
    let m = manifests();
    let own = m.namespace();
    let lease = |verb: &str| Permission {
        name: Some("pgop-scheduler".into()),
        ..perm("coordination.k8s.io", "leases", verb)
    };
    let missing = m.missing(
        "pgop-scheduler",
        Some(&own),
        &[
            lease("get"),
            lease("update"),
            perm("coordination.k8s.io", "leases", "create"),
        ],
    );
    assert!(missing.is_empty(), "pgop-scheduler lacks {missing:?}");
    assert!(
        m.cluster_role_bindings()
            .iter()
            .flat_map(|(_, b)| b.subjects.iter().flatten())
            .all(|s| s.name != "pgop-scheduler"),
        "pgop-scheduler holds cluster-wide rights"
    );
    for (namespace, p) in [
        (
            Some(own.as_str()),
            Permission {
                name: Some("pgop-watcher".into()),
                ..perm("coordination.k8s.io", "leases", "update")
            },
        ),
        (
            Some(own.as_str()),
            perm("coordination.k8s.io", "leases", "delete"),
        ),
        (Some("team-a"), lease("get")),
        (Some(own.as_str()), perm("", "configmaps", "get")),
        (Some(own.as_str()), perm("", "secrets", "get")),
        (None, perm("acid.zalan.do", "postgresqls", "get")),
        (None, perm("", "pods", "get")),
    ] {
        assert!(
            !m.can("pgop-scheduler", namespace, &p),
            "pgop-scheduler may {p:?} in {namespace:?}"
        );
    }
}

// ---- tests: the kustomization ------------------------------------------------------------------

#[test]
fn kustomization_lists_existing_files_and_all_of_them() {
    let m = manifests();
    let deploy = root().join("deploy/base");
    let resources: Vec<&str> = m.kustomization["resources"]
        .as_sequence()
        .expect("deploy/base/kustomization.yaml has resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a path"))
        .collect();

    let mut listed = BTreeSet::new();
    for resource in &resources {
        let path = deploy.join(resource);
        let path = path.canonicalize().unwrap_or_else(|e| {
            panic!("deploy/base/kustomization.yaml: resource {resource:?}: {e}")
        });
        if path.is_dir() {
            // A directory resource is another kustomization: what it lists counts as listed.
            let nested = path.join("kustomization.yaml");
            let text = std::fs::read_to_string(&nested).unwrap_or_else(|e| {
                panic!("resource {resource:?} is a directory without a kustomization.yaml: {e}")
            });
            let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("kustomization YAML");
            for inner in doc["resources"].as_sequence().into_iter().flatten() {
                let inner = inner.as_str().expect("a resource is a path");
                let file = path
                    .join(inner)
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{}: resource {inner:?}: {e}", rel(&nested)));
                assert!(
                    listed.insert(rel(&file)),
                    "resource {inner:?} is listed twice"
                );
            }
            continue;
        }
        assert!(
            listed.insert(rel(&path)),
            "resource {resource:?} is listed twice"
        );
    }

    let mut wanted: BTreeSet<String> = [
        "manifests/postgresql.crd.yaml",
        OPERATOR_CONFIGURATION_CRD,
        "manifests/configmap.yaml",
        "manifests/postgres-pod-rbac.yaml",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for dir in ["manifests/rbac", "deploy/base"] {
        let files = yaml_files(&root().join(dir));
        assert!(!files.is_empty(), "{dir} is empty");
        wanted.extend(
            files
                .iter()
                .filter(|f| !is_kustomization(f))
                .map(|f| rel(f)),
        );
    }
    let forgotten: Vec<&String> = wanted.difference(&listed).collect();
    assert!(
        forgotten.is_empty(),
        "deploy/base/kustomization.yaml does not list {forgotten:?}"
    );

    // The namespace it puts everything into is one it creates.
    let namespace = m.namespace();
    assert!(
        m.docs.iter().any(|d| matches!(&d.object,
            Object::Namespace(n) if n.metadata.name.as_deref() == Some(namespace.as_str()))
            && listed.contains(&d.file)),
        "no listed file creates the namespace {namespace:?}"
    );
}

/// `kubectl kustomize` of a directory of the repository, as YAML documents.
fn rendered(dir: &str) -> Vec<Value> {
    let output = std::process::Command::new("kubectl")
        .args(["kustomize", &root().join(dir).display().to_string()])
        .output()
        .unwrap_or_else(|e| {
            panic!("running kubectl kustomize {dir} (e2e/env/install.sh installs kubectl): {e}")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8 output");
    documents(&text).unwrap_or_else(|e| panic!("kubectl kustomize {dir}: {e}"))
}

#[test]
fn the_local_overlay_swaps_only_the_image_and_the_disruption_budgets_version() {
    let base = rendered("deploy");
    let local = rendered("deploy/overlays/local");
    assert_eq!(base.len(), local.len(), "the overlay adds or drops objects");
    let mut images = BTreeSet::new();
    let mut budgets = 0;
    for (b, l) in base.iter().zip(&local) {
        let mut expected = b.clone();
        if b["kind"] == "PodDisruptionBudget" {
            assert_eq!(b["apiVersion"], "policy/v1");
            expected["apiVersion"] = "policy/v1beta1".into();
            budgets += 1;
        }
        if b["kind"] == "Deployment" {
            for (i, c) in b["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                assert_eq!(c["image"], "pgop:latest", "the base's image");
                let image = &l["spec"]["template"]["spec"]["containers"][i]["image"];
                images.insert(image.as_str().unwrap_or_default().to_string());
                expected["spec"]["template"]["spec"]["containers"][i]["image"] =
                    l["spec"]["template"]["spec"]["containers"][i]["image"].clone();
            }
        }
        assert_eq!(
            &expected,
            l,
            "{} {} differs",
            b["kind"].as_str().unwrap_or_default(),
            b["metadata"]["name"].as_str().unwrap_or_default()
        );
    }
    assert_eq!(budgets, 3, "watcher, scheduler and worker budgets");
    let images: Vec<_> = images.into_iter().collect();
    assert_eq!(images, ["pgop:local"]);
}

// ---- tests: Deployments, Services, Dockerfile ----------------------------------------------

fn container_port(container: &Container, port: &IntOrString) -> Option<i32> {
    container.ports.iter().flatten().find_map(|p| match port {
        IntOrString::Int(n) if p.container_port == *n => Some(p.container_port),
        IntOrString::String(name) if p.name.as_deref() == Some(name.as_str()) => {
            Some(p.container_port)
        }
        _ => None,
    })
}

fn labels_match(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

#[test]
fn deployments_services_and_the_image_agree() {
    let m = manifests();
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile"))
        .expect("deploy/Dockerfile exists");
    let config_maps: BTreeSet<String> = m
        .config_maps()
        .into_iter()
        .map(|(_, c)| c.metadata.name.clone().unwrap())
        .collect();
    let images: Vec<&str> = m.kustomization["images"]
        .as_sequence()
        .map(|s| s.iter().filter_map(|i| i["name"].as_str()).collect())
        .unwrap_or_default();
    let deployments = m.deployments();
    let services = m.services();

    let mut binaries = BTreeSet::new();
    for (doc, d) in &deployments {
        let at = doc.at();
        let name = d.metadata.name.clone().unwrap();
        let spec = d.spec.as_ref().expect("spec");
        let pod = spec.template.spec.as_ref().expect("pod spec");

        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        assert!(
            labels_match(&selector, &pod_labels(d)),
            "{at}: the selector does not match the pod labels"
        );
        let container_env = |key: &str| {
            pod.containers
                .iter()
                .flat_map(|c| c.env.iter().flatten())
                .find(|e| e.name == key)
                .map(|e| (e.value.clone(), e.value_from.is_some()))
        };
        if name == "pgop-watcher" || name == "pgop-scheduler" {
            // Replicas elect a leader; each needs its own identity.
            assert!(
                spec.replicas.unwrap_or(1) >= 2,
                "{at}: a standby for {name}"
            );
            assert_eq!(
                container_env("PGOP_LEADER_ELECTION"),
                Some((Some("true".into()), false)),
                "{at}: {name} replicas elect a leader"
            );
            assert_eq!(
                container_env("PGOP_IDENTITY").map(|(_, from)| from),
                Some(true),
                "{at}: each replica's identity comes from its pod"
            );
        }

        let account = pod
            .service_account_name
            .as_deref()
            .unwrap_or_else(|| panic!("{at}: no serviceAccountName"));
        let (_, sa) = m.service_account(account);
        assert_eq!(
            m.namespace_of(&sa.metadata.namespace),
            m.namespace_of(&d.metadata.namespace),
            "{at}: ServiceAccount {account} is in another namespace"
        );
        if sa.automount_service_account_token == Some(false) {
            assert_eq!(pod.automount_service_account_token, Some(false), "{at}");
        }
        let pod_non_root = pod
            .security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root)
            == Some(true);

        for c in &pod.containers {
            let at = format!("{at}, container {}", c.name);
            let non_root = c.security_context.as_ref().and_then(|s| s.run_as_non_root);
            assert!(
                non_root == Some(true) || (pod_non_root && non_root.is_none()),
                "{at}: not runAsNonRoot"
            );
            let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            assert!(
                requests.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
                "{at}: no cpu/memory requests"
            );
            let image = c.image.as_deref().unwrap_or_default();
            assert!(
                images.contains(&image.split(':').next().unwrap()),
                "{at}: image {image:?} is not one the kustomization sets ({images:?})"
            );

            let command = c.command.as_deref().unwrap_or_default();
            let binary = command
                .first()
                .and_then(|c| c.strip_prefix("/usr/local/bin/"))
                .unwrap_or_else(|| panic!("{at}: command {command:?} is not a pgop binary"));
            assert!(
                dockerfile.contains(&format!("target/release/{binary}")),
                "{at}: deploy/Dockerfile does not install {binary}"
            );
            assert!(
                dockerfile.contains(&format!("-p {binary}")),
                "{at}: deploy/Dockerfile does not build {binary}"
            );
            binaries.insert(binary.to_string());

            // Probes on the admin port (PGOP_ADMIN_ADDR): /readyz and /livez.
            for (probe, path) in [
                (&c.readiness_probe, "/readyz"),
                (&c.liveness_probe, "/livez"),
            ] {
                let get = probe
                    .as_ref()
                    .and_then(|p| p.http_get.as_ref())
                    .unwrap_or_else(|| panic!("{at}: needs an httpGet probe on {path}"));
                assert_eq!(get.path.as_deref(), Some(path), "{at}");
                assert!(
                    container_port(c, &get.port).is_some(),
                    "{at}: probe port {:?}",
                    get.port
                );
            }
            assert!(
                c.env.iter().flatten().any(|e| e.name == "PGOP_ADMIN_ADDR"),
                "{at}: no admin port (PGOP_ADMIN_ADDR)"
            );

            let env = c.env.as_deref().unwrap_or_default();
            let mut defined = BTreeSet::new();
            let mut listens = false;
            for var in env {
                let at = format!("{at}, env {}", var.name);
                if let Some(value) = &var.value {
                    // $(VAR) only expands variables defined earlier in the list.
                    for part in value.split("$(").skip(1) {
                        let referenced = part.split(')').next().unwrap();
                        assert!(
                            defined.contains(referenced),
                            "{at}: $({referenced}) is not defined before"
                        );
                    }
                    if var.name == "PGOP_GRPC_ADDR" || var.name == "PGOP_HTTP_ADDR" {
                        let port: i32 = value.rsplit(':').next().unwrap().parse().unwrap();
                        assert!(
                            container_port(c, &IntOrString::Int(port)).is_some(),
                            "{at}: listens on {port}, not a container port"
                        );
                        listens = true;
                    }
                    // http://SERVICE:PORT names a Service with that port, in front of a
                    // Deployment whose container listens there.
                    if let Some(target) = value.strip_prefix("http://") {
                        if !target.starts_with("$(") {
                            let (host, port) = target.split_once(':').expect("host:port");
                            let port: i32 = port.parse().unwrap();
                            let (_, svc) = services
                                .iter()
                                .find(|(_, s)| s.metadata.name.as_deref() == Some(host))
                                .unwrap_or_else(|| panic!("{at}: no Service {host:?}"));
                            let svc_spec = svc.spec.as_ref().unwrap();
                            let svc_port = svc_spec
                                .ports
                                .iter()
                                .flatten()
                                .find(|p| p.port == port)
                                .unwrap_or_else(|| {
                                    panic!("{at}: Service {host} has no port {port}")
                                });
                            let selector = svc_spec.selector.clone().unwrap_or_default();
                            let backends: Vec<_> = deployments
                                .iter()
                                .filter(|(_, d)| labels_match(&selector, &pod_labels(d)))
                                .collect();
                            assert_eq!(
                                backends.len(),
                                1,
                                "{at}: Service {host} selects one Deployment"
                            );
                            let target_port = svc_port
                                .target_port
                                .clone()
                                .unwrap_or(IntOrString::Int(port));
                            let backend = backends[0]
                                .1
                                .spec
                                .as_ref()
                                .unwrap()
                                .template
                                .spec
                                .as_ref()
                                .unwrap();
                            assert!(
                                backend
                                    .containers
                                    .iter()
                                    .any(|c| container_port(c, &target_port) == Some(port)),
                                "{at}: Service {host} does not reach a container on {port}"
                            );
                        }
                    }
                }
                if let Some(from) = &var.value_from {
                    if let Some(r) = &from.config_map_key_ref {
                        assert!(
                            config_maps.contains(&r.name),
                            "{at}: no ConfigMap {:?}",
                            r.name
                        );
                    }
                }
                defined.insert(var.name.clone());
            }
            assert!(
                listens,
                "{at}: sets neither PGOP_GRPC_ADDR nor PGOP_HTTP_ADDR"
            );
        }
    }
    for process in [
        "pgop-watcher",
        "pgop-scheduler",
        "pgop-worker",
        "pgop-api-gateway",
    ] {
        assert!(binaries.contains(process), "no Deployment runs {process}");
    }

    for (doc, svc) in &services {
        let spec = svc.spec.as_ref().expect("spec");
        let selector = spec.selector.clone().unwrap_or_default();
        let backends: Vec<_> = deployments
            .iter()
            .filter(|(_, d)| labels_match(&selector, &pod_labels(d)))
            .collect();
        assert_eq!(
            backends.len(),
            1,
            "{}: selects exactly one Deployment",
            doc.at()
        );
        let pod = backends[0]
            .1
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        for port in spec.ports.iter().flatten() {
            let target = port
                .target_port
                .clone()
                .unwrap_or(IntOrString::Int(port.port));
            assert!(
                pod.containers
                    .iter()
                    .any(|c| container_port(c, &target).is_some()),
                "{}: port {} targets {target:?}, which no container has",
                doc.at(),
                port.port
            );
        }
    }
}

// ---- the checks themselves fail on broken input ------------------------------------------------

#[test]
fn a_misspelt_field_or_wrong_api_version_is_caught() {
    let misspelt: Value = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "x"},
        "rules": [{"apiGroups": [""], "resource": ["pods"], "verbs": ["get"]}],
    });
    let err = parse_object(&misspelt).unwrap_err();
    assert!(err.contains("rules[0].resource"), "{err}");

    let old: Value = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1beta1",
        "kind": "ClusterRole",
        "metadata": {"name": "x"},
    });
    assert!(parse_object(&old).unwrap_err().contains("apiVersion"));

    let unknown: Value =
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}});
    assert!(parse_object(&unknown).is_err());

    let number: Value = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"workers": 8},
    });
    assert!(
        parse_object(&number).is_err(),
        "ConfigMap values are strings"
    );
}

#[test]
fn rule_matching_follows_kubernetes() {
    let rule =
        |groups: &[&str], resources: &[&str], verbs: &[&str], names: Option<&[&str]>| PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: names.map(|n| n.iter().map(|s| s.to_string()).collect()),
            non_resource_urls: None,
        };
    let pods_get = perm("", "pods", "get");
    assert!(allows(&rule(&[""], &["pods"], &["get"], None), &pods_get));
    assert!(allows(&rule(&["*"], &["*"], &["*"], None), &pods_get));
    assert!(!allows(
        &rule(&["apps"], &["pods"], &["get"], None),
        &pods_get
    ));
    assert!(!allows(&rule(&[""], &["pods"], &["list"], None), &pods_get));
    assert!(!allows(
        &rule(&[""], &["pods/status"], &["get"], None),
        &pods_get
    ));
    assert!(allows(
        &rule(&["acid.zalan.do"], &["postgresqls/*"], &["patch"], None),
        &perm("acid.zalan.do", "postgresqls/status", "patch")
    ));
    // resourceNames: only requests for that name
    let named = rule(
        &[""],
        &["configmaps"],
        &["get"],
        Some(&["postgres-operator"]),
    );
    assert!(!allows(&named, &perm("", "configmaps", "get")));
    assert!(allows(
        &named,
        &Permission {
            name: Some("postgres-operator".into()),
            ..perm("", "configmaps", "get")
        }
    ));
    assert!(!allows(
        &named,
        &Permission {
            name: Some("other".into()),
            ..perm("", "configmaps", "get")
        }
    ));
    assert_eq!(
        permissions(&[rule(&["", "apps"], &["a", "b"], &["get", "list"], None)]).len(),
        8
    );
}

#[test]
fn a_drain_never_takes_the_last_leader_candidate_or_several_workers() {
    let m = manifests();
    let budgets: Vec<&PodDisruptionBudget> = m
        .docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::PodDisruptionBudget(b) => Some(b),
            _ => None,
        })
        .collect();
    for (doc, deployment) in m.deployments() {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let labels = pod_labels(deployment);
        let covering: Vec<&&PodDisruptionBudget> = budgets
            .iter()
            .filter(|b| {
                let selector = b
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(|s| s.match_labels.clone())
                    .unwrap_or_default();
                !selector.is_empty() && labels_match(&selector, &labels)
            })
            .collect();
        if name == "pgop-api-gateway" {
            continue;
        }
        assert_eq!(
            covering.len(),
            1,
            "{}: one disruption budget for {name}",
            doc.at()
        );
        let spec = covering[0].spec.as_ref().unwrap();
        let want = match name.as_str() {
            "pgop-worker" => (None, Some(IntOrString::Int(1))),
            _ => (Some(IntOrString::Int(1)), None),
        };
        assert_eq!(
            (spec.min_available.clone(), spec.max_unavailable.clone()),
            want,
            "{name}"
        );
    }
}
