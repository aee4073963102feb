//! Linting and rendering the chart with the Helm SDK, and reading what it rendered.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// Release namespace `helm.py` renders into.
pub(crate) const NAMESPACE: &str = "kubefaas-system";

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn chart_dir() -> PathBuf {
    repo_root().join("charts/kubefaas")
}

/// The values variants every check runs over: the chart's defaults, kind's overrides, and
/// every optional feature on.
pub(crate) fn variants() -> Vec<(&'static str, Vec<PathBuf>)> {
    vec![
        ("default values", vec![]),
        ("values-kind.yaml", vec![chart_dir().join("values-kind.yaml")]),
        ("values-cluster.yaml", vec![chart_dir().join("values-cluster.yaml")]),
        ("values-all.yaml", vec![repo_root().join("charts/tests/values-all.yaml")]),
    ]
}

/// Runs `helm.py COMMAND CHART VALUES...` with the tests' Python (`make deps` makes it and the
/// Makefile exports `KUBEFAAS_TEST_PYTHON`).
pub(crate) fn helm(command: &str, values: &[PathBuf]) -> Output {
    let python = std::env::var_os("KUBEFAAS_TEST_PYTHON").unwrap_or_else(|| {
        panic!(
            "KUBEFAAS_TEST_PYTHON is not set: the chart tests need the Python of .venv/tests with \
             helm-python-sdk (run `make deps`, or `make test`)"
        )
    });
    Command::new(&python)
        .arg(repo_root().join("charts/tests/helm.py"))
        .arg(command)
        .arg(chart_dir())
        .args(values)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&python).display()))
}

/// The chart rendered as `helm template` does, one JSON value per object.
pub(crate) fn render(values: &[PathBuf]) -> Vec<Value> {
    let output = helm("template", values);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "helm template failed with {values:?}:\n{stderr}");
    let text = String::from_utf8(output.stdout).expect("manifests are UTF-8");
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("the rendered manifests are not YAML ({e}):\n{text}"));
    let objects: Vec<Value> = documents.into_iter().filter(|d| !d.is_null()).collect();
    assert!(!objects.is_empty(), "nothing rendered:\n{stderr}");
    objects
}

pub(crate) fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

pub(crate) fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

pub(crate) fn of_kind<'a>(objects: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| kind(o) == wanted).collect()
}

/// The pod template of every workload, by workload name.
pub(crate) fn pod_templates(objects: &[Value]) -> Vec<(String, PodTemplateSpec)> {
    objects
        .iter()
        .filter(|o| matches!(kind(o), "Deployment" | "StatefulSet" | "DaemonSet" | "Job"))
        .map(|o| {
            let template = serde_json::from_value(o["spec"]["template"].clone())
                .unwrap_or_else(|e| panic!("{} {}: pod template: {e}", kind(o), name(o)));
            (name(o).to_owned(), template)
        })
        .collect()
}

/// One RBAC permission: API group, resource, verb.
pub(crate) type Permission = (String, String, String);

/// The RBAC table of the chart's README, by component: the rows between `<!-- rbac:begin -->`
/// and `<!-- rbac:end -->`, `| component | API group | resource | verbs | why |`.
pub(crate) fn readme_rbac() -> BTreeMap<String, BTreeSet<Permission>> {
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).expect("chart README");
    let table = readme
        .split_once("<!-- rbac:begin -->")
        .and_then(|(_, rest)| rest.split_once("<!-- rbac:end -->"))
        .map(|(table, _)| table)
        .expect("the chart README has the RBAC table between <!-- rbac:begin/end --> markers");
    let mut permissions: BTreeMap<String, BTreeSet<Permission>> = BTreeMap::new();
    for line in table.lines().map(str::trim).filter(|l| l.starts_with('|')) {
        let cells: Vec<String> =
            line.trim_matches('|').split('|').map(|c| c.trim().replace('`', "")).collect();
        if cells[0] == "component" || cells[0].starts_with("---") {
            continue;
        }
        assert!(cells.len() >= 4, "RBAC row with too few cells: {line}");
        let group = if cells[1] == "\"\"" { String::new() } else { cells[1].clone() };
        for verb in cells[3].split(',').map(str::trim) {
            permissions.entry(cells[0].clone()).or_default().insert((
                group.clone(),
                cells[2].clone(),
                verb.to_owned(),
            ));
        }
    }
    permissions
}

/// Where the workspace's binaries are: beside the directory of this test's executable
/// (`target/<profile>/deps/..`), built by `cargo test --workspace` / `cargo nextest run
/// --workspace` for the packages' own integration tests.
pub(crate) fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe.parent().and_then(Path::parent).expect("target/<profile>").join(name);
    assert!(
        path.exists(),
        "{} is not built; build the workspace first (`cargo build --workspace --bins` or `make test`)",
        path.display()
    );
    path
}

/// A values file of a test's own, removed when dropped.
pub(crate) struct TempValues(pub(crate) PathBuf);

impl TempValues {
    pub(crate) fn new(text: &str) -> Self {
        let path = std::env::temp_dir()
            .join(format!("kubefaas-chart-values-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, text).expect("a temporary values file");
        Self(path)
    }
}

impl Drop for TempValues {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
