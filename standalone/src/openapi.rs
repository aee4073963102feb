//! OpenAPI v3 documents for the served types: an index at `/openapi/v3` and one document per
//! group-version. Custom resources carry their CRD schema (so `kubectl explain` works);
//! built-ins carry an open object schema. Every `PATCH` operation declares the
//! `fieldValidation` parameter, so `kubectl apply` leaves validation to the server.

use std::hash::{DefaultHasher, Hash, Hasher};

use serde_json::{Map, Value, json};

use crate::registry::{Registry, ResourceType};

/// The OpenAPI name of a type: `io.kubefaas.v1alpha1.Function`, `io.k8s.api.core.v1.Pod`.
fn schema_name(rt: &ResourceType, kind: &str) -> String {
    if rt.custom {
        let reversed: Vec<&str> = rt.group.split('.').rev().collect();
        format!("{}.{}.{kind}", reversed.join("."), rt.version)
    } else {
        let group = rt.group.split('.').next().filter(|g| !g.is_empty()).unwrap_or("core");
        format!("io.k8s.api.{group}.{}.{kind}", rt.version)
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

/// The index: one entry per group-version, with a hash that changes with the document.
pub(crate) fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<(String, String)> = Vec::new();
    for rt in registry.all() {
        let gv = (rt.group.clone(), rt.version.clone());
        if !gvs.contains(&gv) {
            gvs.push(gv);
        }
    }
    for (group, version) in gvs {
        let doc = document(registry, &group, &version);
        let mut hasher = DefaultHasher::new();
        doc.to_string().hash(&mut hasher);
        let path = gv_path(&group, &version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={:016X}", hasher.finish())}),
        );
    }
    json!({"paths": paths})
}

fn object_meta() -> Value {
    let string = |d: &str| json!({"type": "string", "description": d});
    let map = |d: &str| json!({"type": "object", "additionalProperties": {"type": "string"}, "description": d});
    json!({
        "type": "object",
        "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create.",
        "properties": {
            "name": string("Name must be unique within a namespace."),
            "generateName": string("GenerateName is an optional prefix, used by the server, to generate a unique name ONLY IF the Name field has not been provided."),
            "namespace": string("Namespace defines the space within which each name must be unique."),
            "uid": string("UID is the unique in time and space value for this object."),
            "resourceVersion": string("An opaque value that represents the internal version of this object."),
            "generation": {"type": "integer", "format": "int64", "description": "A sequence number representing a specific generation of the desired state."},
            "creationTimestamp": string("CreationTimestamp is a timestamp representing the server time when this object was created."),
            "deletionTimestamp": string("DeletionTimestamp is RFC 3339 date and time at which this resource will be deleted."),
            "labels": map("Map of string keys and values that can be used to organize and categorize (scope and select) objects."),
            "annotations": map("Annotations is an unstructured key value map stored with a resource."),
            "finalizers": {"type": "array", "items": {"type": "string"}, "description": "Must be empty before the object is deleted from the registry."},
            "ownerReferences": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "List of objects depended by this object."},
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}, "description": "ManagedFields maps workflow-id and version to the set of fields that are managed by that workflow."}
        }
    })
}

fn gvk(rt: &ResourceType, kind: &str) -> Value {
    json!({"group": rt.group, "version": rt.version, "kind": kind})
}

fn type_schema(rt: &ResourceType) -> Value {
    let mut schema = rt
        .schema_json
        .clone()
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    if !schema.is_object() {
        schema = json!({"type": "object"});
    }
    if !schema["properties"].is_object() {
        schema["properties"] = json!({});
    }
    schema["properties"]["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    schema["properties"]["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    schema["properties"]["metadata"] = json!({
        "description": "Standard object's metadata.",
        "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
    });
    schema["x-kubernetes-group-version-kind"] = json!([gvk(rt, &rt.kind)]);
    schema
}

fn operation(rt: &ResourceType, verb: &str, schema_ref: &str, write: bool) -> Value {
    let mut params = vec![json!({"name": "dryRun", "in": "query", "schema": {"type": "string"}})];
    if write {
        for name in ["fieldManager", "fieldValidation"] {
            params.push(json!({"name": name, "in": "query", "schema": {"type": "string"}}));
        }
    }
    if verb == "patch" {
        params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean"}}));
    }
    json!({
        "operationId": format!("{verb}{}", rt.kind),
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": schema_ref}}}}},
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": gvk(rt, &rt.kind),
    })
}

/// The document of one group-version, or `None` if nothing is served there.
pub(crate) fn document(registry: &Registry, group: &str, version: &str) -> Value {
    let mut schemas = Map::new();
    schemas.insert("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(), object_meta());
    let mut paths = Map::new();
    for rt in registry.all().iter().filter(|t| t.group == group && t.version == version) {
        let name = schema_name(rt, &rt.kind);
        let list_name = schema_name(rt, &format!("{}List", rt.kind));
        let reference = format!("#/components/schemas/{name}");
        schemas.insert(name.clone(), type_schema(rt));
        schemas.insert(
            list_name,
            json!({
                "type": "object",
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": {"$ref": reference}},
                },
                "x-kubernetes-group-version-kind": [gvk(rt, &format!("{}List", rt.kind))],
            }),
        );
        let base = format!("/{}", gv_path(group, version));
        let collection = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", rt.plural)
        } else {
            format!("{base}/{}", rt.plural)
        };
        paths.insert(
            collection.clone(),
            json!({
                "get": operation(rt, "list", &reference, false),
                "post": operation(rt, "post", &reference, true),
            }),
        );
        let item = json!({
            "get": operation(rt, "get", &reference, false),
            "put": operation(rt, "put", &reference, true),
            "patch": operation(rt, "patch", &reference, true),
            "delete": operation(rt, "delete", &reference, false),
        });
        paths.insert(format!("{collection}/{{name}}"), item.clone());
        if rt.status_subresource {
            paths.insert(format!("{collection}/{{name}}/status"), item);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
