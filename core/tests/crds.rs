//! The CRDs in `crds/` are the ones the Rust types generate, they are structural schemas a real
//! API server accepts, and every manifest in `examples/` is admitted by them and by the shared
//! validation.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers fail loudly by design

use std::{fs, path::PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kubefaas_core::{
    resources::{
        Function, Invocation, crd_file_name, crd_yaml, crds, function_crd, invocation_crd,
    },
    schema, validation,
};
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn open_api_schema(crd: &CustomResourceDefinition) -> &JSONSchemaProps {
    crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("every CRD version has a schema")
}

fn crd_for_kind(kind: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
}

#[test]
fn crds_directory_matches_what_the_rust_types_generate() {
    for crd in crds() {
        let path = repo_root().join("crds").join(crd_file_name(&crd));
        let on_disk = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); run `make crds`", path.display()));
        let generated = crd_yaml(&crd).expect("CRD serialises");
        assert!(
            on_disk == generated,
            "{} is out of date with the Rust types; run `make crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crds_directory_holds_nothing_else() {
    let mut expected: Vec<String> = crds().iter().map(crd_file_name).collect();
    expected.sort();
    let mut found: Vec<String> = fs::read_dir(repo_root().join("crds"))
        .expect("crds/ exists")
        .map(|entry| entry.expect("readable entry").file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, expected);
}

#[test]
fn generated_schemas_are_structural() {
    for crd in crds() {
        let violations = schema::structural_violations(open_api_schema(&crd));
        assert!(violations.is_empty(), "{}:\n{}", crd_file_name(&crd), violations.join("\n"));
    }
}

#[test]
fn only_payload_and_result_keep_unknown_fields() {
    assert_eq!(
        schema::preserve_unknown_fields_paths(open_api_schema(&function_crd())),
        Vec::<String>::new()
    );
    assert_eq!(
        schema::preserve_unknown_fields_paths(open_api_schema(&invocation_crd())),
        vec![".spec.payload", ".status.result"]
    );
}

#[test]
fn crds_have_short_names_printer_columns_and_a_status_subresource() {
    for (crd, short, columns) in [
        (function_crd(), "fn", vec!["Runtime", "Phase", "Age"]),
        (invocation_crd(), "inv", vec!["Function", "Phase", "Duration", "Age"]),
    ] {
        assert_eq!(crd.spec.group, "kubefaas.io");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names.as_deref(), Some(&[short.to_owned()][..]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.served && version.storage);
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        let names: Vec<&str> =
            version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        for column in columns {
            assert!(names.contains(&column), "{column} missing from {names:?}");
        }
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    fn check(node: &JSONSchemaProps, path: &str, missing: &mut Vec<String>) {
        for (name, sub) in node.properties.iter().flatten() {
            let here = format!("{path}.{name}");
            // metadata and conditions come from Kubernetes' own types.
            if here.ends_with(".metadata") || here.contains(".conditions") {
                continue;
            }
            if sub.description.as_deref().is_none_or(str::is_empty) {
                missing.push(here.clone());
            }
            check(sub, &here, missing);
            if let Some(
                k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(item),
            ) = &sub.items
            {
                check(item, &format!("{here}[*]"), missing);
            }
        }
    }
    for crd in crds() {
        let mut missing = Vec::new();
        check(open_api_schema(&crd), "", &mut missing);
        missing.retain(|p| p != ".apiVersion" && p != ".kind");
        assert!(missing.is_empty(), "{}: no description on {missing:?}", crd_file_name(&crd));
    }
}

#[test]
fn every_example_manifest_is_admitted_by_its_schema_and_the_shared_validation() {
    let mut seen = 0;
    let mut entries: Vec<PathBuf> = fs::read_dir(repo_root().join("examples"))
        .expect("examples/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    entries.sort();
    for path in entries {
        let text = fs::read_to_string(&path).expect("readable example");
        let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        for object in documents {
            let kind = object["kind"].as_str().expect("manifest has a kind");
            let crd = crd_for_kind(kind);
            let schema_props = open_api_schema(&crd);
            if let Err(errs) = schema::validate(&object, schema_props) {
                panic!("{}: rejected by the {kind} schema: {errs}", path.display());
            }
            let unknown = schema::unknown_fields(&object, schema_props);
            assert!(unknown.is_empty(), "{}: unknown fields {unknown:?}", path.display());
            let name = object["metadata"]["name"].as_str().expect("manifest has a name");
            let limits = validation::Limits::default();
            let verdict = match kind {
                "Function" => {
                    let function: Function = serde_json::from_value(object.clone())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    validation::validate_function(name, &function.spec, &limits)
                }
                "Invocation" => {
                    let invocation: Invocation = serde_json::from_value(object.clone())
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    validation::validate_invocation(name, &invocation.spec, &limits)
                }
                other => panic!("{}: unexpected kind {other}", path.display()),
            };
            if let Err(errs) = verdict {
                panic!("{}: rejected by validation: {errs}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected at least a Function and an Invocation in examples/");
}

fn function_object(spec: Value) -> Value {
    json!({"apiVersion": "kubefaas.io/v1alpha1", "kind": "Function",
           "metadata": {"name": "f"}, "spec": spec})
}

#[test]
fn function_schema_rejects_what_an_api_server_must_reject() {
    let crd = function_crd();
    let schema_props = open_api_schema(&crd);
    let cases = [
        (
            json!({"runtime": "ruby", "handler": "main.handler", "code": {"inline": "x"}}),
            "spec.runtime: Unsupported value: \"ruby\"",
        ),
        (
            json!({"runtime": "python", "handler": "main.handler",
                   "code": {"inline": "x", "base64": "eA=="}}),
            "spec.code in body must match exactly one schema in oneOf, matched 2",
        ),
        (json!({"runtime": "python", "handler": "main.handler", "code": {}}), "matched 0"),
        (
            json!({"runtime": "python", "handler": "h.h", "code": {"url": "https://x.test/a"}}),
            "matched 0",
        ),
        (
            json!({"runtime": "python", "handler": "main.handler", "code": {"inline": "x"},
                   "timeoutSeconds": 0}),
            "spec.timeoutSeconds in body should be greater than or equal to 1",
        ),
        (json!({"runtime": "python", "code": {"inline": "x"}}), "spec.handler: Required value"),
        (
            json!({"runtime": "python", "handler": "main.handler", "code": {"inline": "x"},
                   "maxConcurrency": "ten"}),
            "spec.maxConcurrency in body must be of type integer",
        ),
    ];
    for (spec, expected) in cases {
        let errs = schema::validate(&function_object(spec.clone()), schema_props)
            .expect_err("schema should reject")
            .to_string();
        assert!(errs.contains(expected), "for {spec}: expected {expected:?} in {errs}");
    }
}

#[test]
fn invocation_schema_takes_any_json_payload_but_checks_the_rest() {
    let crd = invocation_crd();
    let schema_props = open_api_schema(&crd);
    for payload in
        [json!({"deep": {"x": [1, "two", null]}}), json!([1, 2]), json!("text"), json!(7)]
    {
        let object = json!({"kind": "Invocation", "metadata": {"name": "i"},
                            "spec": {"functionRef": {"name": "hello"}, "payload": payload}});
        assert_eq!(schema::validate(&object, schema_props), Ok(()), "{payload}");
    }
    let missing_ref = json!({"kind": "Invocation", "metadata": {"name": "i"}, "spec": {}});
    let errs = schema::validate(&missing_ref, schema_props).unwrap_err().to_string();
    assert!(errs.contains("spec.functionRef: Required value"), "{errs}");
}
