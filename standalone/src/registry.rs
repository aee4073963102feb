//! The resource types the server serves: a fixed set of built-ins and one entry per served
//! version of every `CustomResourceDefinition` in the store.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
use serde_json::Value;

/// One column of `kubectl get` output (a CRD's `additionalPrinterColumns`).
#[derive(Debug, Clone)]
pub(crate) struct PrinterColumn {
    /// Column header.
    pub(crate) name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean`, `date`.
    pub(crate) type_: String,
    /// OpenAPI format, like `name`.
    pub(crate) format: String,
    /// Column description.
    pub(crate) description: String,
    /// 0 for the default view; higher only with `-o wide`.
    pub(crate) priority: i64,
    /// Simple JSONPath of the value, like `.spec.runtime`.
    pub(crate) json_path: String,
}

/// A served resource type (one group/version/plural).
#[derive(Debug, Clone)]
pub(crate) struct ResourceType {
    /// API group, empty for the core group.
    pub(crate) group: String,
    /// The group objects are stored under: `group`, except for types that are another view of
    /// a core type (`events.k8s.io` events are core events).
    pub(crate) storage_group: String,
    /// API version.
    pub(crate) version: String,
    /// Plural resource name, the path segment.
    pub(crate) plural: String,
    /// Singular name.
    pub(crate) singular: String,
    /// Kind.
    pub(crate) kind: String,
    /// Namespaced or cluster-scoped.
    pub(crate) namespaced: bool,
    /// Short names for `kubectl get`.
    pub(crate) short_names: Vec<String>,
    /// Categories, like `all`.
    pub(crate) categories: Vec<String>,
    /// Whether the `status` subresource is enabled.
    pub(crate) status_subresource: bool,
    /// The schema of a custom resource (`None` for built-ins: not validated).
    pub(crate) schema: Option<JSONSchemaProps>,
    /// The schema as JSON, for OpenAPI documents.
    pub(crate) schema_json: Option<Value>,
    /// Printer columns beyond NAME (and before AGE for built-ins).
    pub(crate) columns: Vec<PrinterColumn>,
    /// Whether this is a custom resource.
    pub(crate) custom: bool,
}

impl ResourceType {
    /// `apiVersion` of objects of this type.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `functions.kubefaas.io`, or `configmaps` for the core group: how errors name the type.
    pub(crate) fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `obj` (in this type's form) as it is stored.
    pub(crate) fn to_storage(&self, obj: Value) -> Value {
        self.convert(obj, true)
    }

    /// A stored object in this type's form (without setting `apiVersion`/`kind`).
    pub(crate) fn served_form(&self, obj: Value) -> Value {
        self.convert(obj, false)
    }

    fn convert(&self, mut obj: Value, to_storage: bool) -> Value {
        if self.group == EVENTS_GROUP
            && let Some(map) = obj.as_object_mut()
        {
            for (ours, core) in EVENT_FIELDS {
                let (from, to) = if to_storage { (ours, core) } else { (core, ours) };
                if let Some(v) = map.remove(*from) {
                    map.insert((*to).to_owned(), v);
                }
            }
            if to_storage {
                map.insert("apiVersion".into(), Value::String("v1".into()));
            }
        }
        obj
    }

    /// The verbs the type supports, for discovery.
    pub(crate) fn verbs(&self) -> Vec<&'static str> {
        vec!["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

const EVENTS_GROUP: &str = "events.k8s.io";

/// Fields of an `events.k8s.io/v1` Event and their core/v1 names; both are views of one
/// stored object, as on a real API server.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// A built-in column: header, type, JSONPath (or `#name` for a computed cell), priority.
type Column = (&'static str, &'static str, &'static str, i64);

/// group, version, plural, kind, namespaced, short names, status subresource, columns.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
    &'static [Column],
);

#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    ("", "v1", "namespaces", "Namespace", false, &["ns"], true, &[("Status", "string", ".status.phase", 0)]),
    ("", "v1", "configmaps", "ConfigMap", true, &["cm"], false, &[("Data", "integer", "#data", 0)]),
    ("", "v1", "secrets", "Secret", true, &[], false, &[("Type", "string", ".type", 0), ("Data", "integer", "#data", 0)]),
    ("", "v1", "pods", "Pod", true, &["po"], true, &[
        ("Ready", "string", "#ready", 0), ("Status", "string", ".status.phase", 0),
        ("Restarts", "integer", "#restarts", 0), ("IP", "string", ".status.podIP", 1),
        ("Node", "string", ".spec.nodeName", 1),
    ]),
    ("", "v1", "services", "Service", true, &["svc"], true, &[
        ("Type", "string", ".spec.type", 0), ("Cluster-IP", "string", ".spec.clusterIP", 0),
        ("Ports", "string", "#ports", 0),
    ]),
    ("", "v1", "events", "Event", true, &["ev"], false, &[
        ("Last Seen", "date", "#lastseen", 0), ("Type", "string", ".type", 0),
        ("Reason", "string", ".reason", 0), ("Object", "string", "#involved", 0),
        ("Message", "string", ".message", 0), ("Name", "string", ".metadata.name", 1),
    ]),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false, &[]),
    ("events.k8s.io", "v1", "events", "Event", true, &["ev"], false, &[
        ("Type", "string", ".type", 0), ("Reason", "string", ".reason", 0), ("Note", "string", ".note", 0),
    ]),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false, &[("Holder", "string", ".spec.holderIdentity", 0)]),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, &["crd", "crds"], true,
        &[("Created At", "string", ".metadata.creationTimestamp", 0)]),
];

/// The built-in types the platform uses.
pub(crate) fn builtins() -> Vec<ResourceType> {
    BUILTINS
        .iter()
        .map(|&(group, version, plural, kind, namespaced, short_names, status, columns)| {
            ResourceType {
                group: group.to_owned(),
                storage_group: if group == EVENTS_GROUP { String::new() } else { group.to_owned() },
                version: version.to_owned(),
                plural: plural.to_owned(),
                singular: kind.to_lowercase(),
                kind: kind.to_owned(),
                namespaced,
                short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
                categories: if matches!(plural, "pods" | "services") {
                    vec!["all".to_owned()]
                } else {
                    vec![]
                },
                status_subresource: status,
                schema: None,
                schema_json: None,
                columns: columns
                    .iter()
                    .map(|&(name, type_, json_path, priority)| PrinterColumn {
                        name: name.to_owned(),
                        type_: type_.to_owned(),
                        format: String::new(),
                        description: String::new(),
                        priority,
                        json_path: json_path.to_owned(),
                    })
                    .collect(),
                custom: false,
            }
        })
        .collect()
}

/// The served types of one CRD object, or the reason it cannot be served.
pub(crate) fn from_crd(crd: &Value) -> Vec<ResourceType> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let plural = text(&names["plural"]);
    let kind = text(&names["kind"]);
    let mut singular = text(&names["singular"]);
    if singular.is_empty() {
        singular = kind.to_lowercase();
    }
    let mut out = Vec::new();
    for version in spec["versions"].as_array().into_iter().flatten() {
        if version["served"].as_bool() == Some(false) {
            continue;
        }
        let schema_json = version["schema"]["openAPIV3Schema"].clone();
        let schema = serde_json::from_value::<JSONSchemaProps>(schema_json.clone()).ok();
        let columns = version["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: text(&c["name"]),
                type_: text(&c["type"]),
                format: text(&c["format"]),
                description: text(&c["description"]),
                priority: c["priority"].as_i64().unwrap_or(0),
                json_path: text(&c["jsonPath"]),
            })
            .collect();
        out.push(ResourceType {
            group: text(&spec["group"]),
            storage_group: text(&spec["group"]),
            version: text(&version["name"]),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: version["subresources"]["status"].is_object(),
            schema,
            schema_json: if schema_json.is_null() { None } else { Some(schema_json) },
            columns,
            custom: true,
        });
    }
    out
}

/// All served types.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Registry {
    /// The built-ins plus the types of `crds`.
    pub(crate) fn new<'a>(crds: impl Iterator<Item = &'a Value>) -> Self {
        let mut types: Vec<Arc<ResourceType>> = builtins().into_iter().map(Arc::new).collect();
        for crd in crds {
            for t in from_crd(crd) {
                // A CRD never shadows a built-in type.
                if !types.iter().any(|b| !b.custom && b.group == t.group && b.plural == t.plural) {
                    types.push(Arc::new(t));
                }
            }
        }
        Self { types }
    }

    /// Every served type.
    pub(crate) fn all(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// The type served at `group`/`version`/`plural`.
    pub(crate) fn find(
        &self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceType>> {
        let found = self
            .types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural);
        found.cloned()
    }

    /// Any served version of `group`/`plural` (for garbage collection, which is version-blind).
    pub(crate) fn find_any_version(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types.iter().find(|t| t.group == group && t.plural == plural).cloned()
    }

    /// Groups with their versions, in a stable order (core group excluded).
    pub(crate) fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in &self.types {
            if t.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) => {
                    if !versions.contains(&t.version) {
                        versions.push(t.version.clone());
                    }
                }
                None => out.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        out
    }
}
