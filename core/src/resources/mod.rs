//! The `kubefaas.io/v1alpha1` custom resources and their CustomResourceDefinitions.
//!
//! The Rust types are the source of truth; `crds/` holds their generated YAML (`make crds`).
//! [`function_crd`] and [`invocation_crd`] add what the derive cannot say on its own: the
//! exactly-one-of rule on `spec.code` and the runtime catalogue as an enum, so a real API server
//! rejects those mistakes before the operator sees them.

mod function;
mod invocation;

pub use function::*;
pub use invocation::*;

/// Labels that more than one component reads or writes.
pub mod labels {
    /// The function an object belongs to, by name: on the code ConfigMaps the operator makes
    /// and on the runtime pods the executor makes, which the operator watches by this label.
    pub const FUNCTION: &str = "kubefaas.io/function";
}

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};
use serde_json::json;

use crate::runtime;

/// The API group of every kubefaas resource.
pub const GROUP: &str = "kubefaas.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Schema of a field that holds arbitrary JSON (payloads and results): the only places where the
/// API server keeps unknown fields.
pub(crate) fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
        "nullable": true,
    })
}

/// The CRD of [`Function`], with the schema rules the derive cannot express.
pub fn function_crd() -> CustomResourceDefinition {
    let mut crd = Function::crd();
    if let Some(spec) = spec_schema(&mut crd) {
        let props = spec.properties.get_or_insert_default();
        if let Some(runtime) = props.get_mut("runtime") {
            runtime.enum_ = Some(runtime::names().map(|name| json!(name).into()).collect());
        }
        if let Some(code) = props.get_mut("code") {
            // Exactly one source: each branch requires one source, and `oneOf` fails when two
            // branches match, so setting two sources is rejected as well as setting none.
            let sources = ["inline", "base64", "configMapRef", "url"];
            code.one_of = Some(
                sources
                    .iter()
                    .map(|source| {
                        let mut required = vec![(*source).to_owned()];
                        if *source == "url" {
                            required.push("sha256".to_owned());
                        }
                        JSONSchemaProps { required: Some(required), ..Default::default() }
                    })
                    .collect(),
            );
        }
    }
    crd
}

/// The CRD of [`Invocation`].
pub fn invocation_crd() -> CustomResourceDefinition {
    Invocation::crd()
}

/// Every CRD kubefaas installs, in the order they should be applied.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![function_crd(), invocation_crd()]
}

/// The YAML document of a CRD, as written to `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}

/// The file name under `crds/` of a CRD (`functions.kubefaas.io.yaml`).
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

fn spec_schema(crd: &mut CustomResourceDefinition) -> Option<&mut JSONSchemaProps> {
    crd.spec
        .versions
        .first_mut()?
        .schema
        .as_mut()?
        .open_api_v3_schema
        .as_mut()?
        .properties
        .as_mut()?
        .get_mut("spec")
}
