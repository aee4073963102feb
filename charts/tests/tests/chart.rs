//! The Helm chart, linted and rendered by the Helm SDK (Helm's own Go code, through `helm.py`),
//! with the default values, kind's values, the real test cluster's values and every optional
//! feature on; then the rendered objects are checked against the Kubernetes types, the README's
//! RBAC mapping, the executor's runtime pods and the binaries' own flag parsers.
//!
//! Needs `KUBEFAAS_TEST_PYTHON` (`make deps` / `make test`) and the workspace's binaries built.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers fail loudly by design

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        core::v1::{Container, EnvVar, Pod, PodSpec, Secret, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kubefaas_executor::{
    Code, FunctionSpec, Scaling,
    kubernetes::{KubernetesConfig, runtime_pod},
    worker::ResolvedFunction,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use support::{
    NAMESPACE, Permission, TempValues, kind, name, of_kind, pod_templates, render, variants,
};

/// The platform binaries and the container of the chart that runs each.
const BINARIES: [(&str, &str); 3] = [
    ("operator", "kubefaas-operator"),
    ("executor", "kubefaas-executor"),
    ("api-gateway", "kubefaas-api-gateway"),
];

fn rendered_variants() -> Vec<(&'static str, Vec<Value>)> {
    variants().into_iter().map(|(label, values)| (label, render(&values))).collect()
}

#[test]
fn chart_lints_clean_in_strict_mode_with_every_values_variant() {
    for (label, values) in variants() {
        let output = support::helm("lint", &values);
        assert!(
            output.status.success(),
            "helm lint --strict with {label} found problems:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `object` read as `K` and written back is `object` again: nothing was dropped as unknown (a
/// misspelt field) and every value has its field's type.
fn round_trips<K: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: K = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut differences = Vec::new();
    compare(object, &back, String::new(), &mut differences);
    if differences.is_empty() { Ok(()) } else { Err(differences.join("\n")) }
}

/// Differences between what was rendered and what the type kept, by JSON path.
fn compare(rendered: &Value, kept: &Value, path: String, out: &mut Vec<String>) {
    match (rendered, kept) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    Some(other) => compare(value, other, here, out),
                    // An empty map or list the type leaves out means the same.
                    None if value.as_object().is_some_and(|m| m.is_empty()) => {}
                    None => out.push(format!("{here}: not a field of the type ({value})")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                compare(x, y, format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: rendered {a}, the type reads {b}")),
    }
}

#[test]
fn every_rendered_object_is_a_valid_object_of_its_kubernetes_type() {
    for (label, objects) in rendered_variants() {
        for object in &objects {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let checked = match (api_version, kind(object)) {
                ("v1", "ServiceAccount") => round_trips::<ServiceAccount>(object),
                ("v1", "Service") => round_trips::<Service>(object),
                ("v1", "Secret") => round_trips::<Secret>(object),
                ("apps/v1", "Deployment") => round_trips::<Deployment>(object),
                ("apps/v1", "StatefulSet") => round_trips::<StatefulSet>(object),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    round_trips::<ClusterRole>(object)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    round_trips::<ClusterRoleBinding>(object)
                }
                ("rbac.authorization.k8s.io/v1", "Role") => round_trips::<Role>(object),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    round_trips::<RoleBinding>(object)
                }
                ("networking.k8s.io/v1", "NetworkPolicy") => round_trips::<NetworkPolicy>(object),
                (api_version, kind) => {
                    Err(format!("{api_version} {kind} has no check here: add its k8s-openapi type"))
                }
            };
            if let Err(why) = checked {
                panic!("{label}: {} {}:\n{why}", kind(object), name(object));
            }
            let labels = &object["metadata"]["labels"];
            assert_eq!(labels["app.kubernetes.io/part-of"], "kubefaas", "{}", name(object));
        }
    }
}

fn is_platform(container: &Container) -> bool {
    BINARIES.iter().any(|(c, _)| *c == container.name)
}

#[test]
fn every_pod_runs_restricted_with_resources_and_probes() {
    for (label, objects) in rendered_variants() {
        let templates = pod_templates(&objects);
        assert!(templates.len() >= 3, "{label}: operator, executor and gateway");
        for (workload, template) in templates {
            let spec = template.spec.expect("a pod spec");
            let pod = spec.security_context.as_ref().expect("a pod security context");
            assert_eq!(pod.run_as_non_root, Some(true), "{label}: {workload}");
            assert!(pod.run_as_user.is_some_and(|uid| uid > 0), "{label}: {workload}");
            assert_eq!(
                pod.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                Some("RuntimeDefault"),
                "{label}: {workload}"
            );
            assert!(spec.host_network != Some(true) && spec.host_pid != Some(true));
            assert!(
                spec.init_containers.is_none(),
                "{label}: {workload} checks no init containers"
            );
            for container in &spec.containers {
                let at = format!("{label}: {workload}/{}", container.name);
                let security = container.security_context.as_ref().expect(&at);
                assert_eq!(security.run_as_non_root, Some(true), "{at}");
                assert_eq!(security.allow_privilege_escalation, Some(false), "{at}");
                assert_eq!(security.privileged, Some(false), "{at}");
                assert_eq!(security.read_only_root_filesystem, Some(true), "{at}");
                let capabilities = security.capabilities.as_ref().expect(&at);
                assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]), "{at}");
                assert_eq!(capabilities.add, None, "{at}");
                assert_eq!(
                    security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                    Some("RuntimeDefault"),
                    "{at}"
                );

                let resources = container.resources.as_ref().expect(&at);
                for bounds in [&resources.requests, &resources.limits] {
                    let bounds = bounds.as_ref().expect(&at);
                    assert!(bounds.contains_key("cpu") && bounds.contains_key("memory"), "{at}");
                }

                let liveness = container.liveness_probe.as_ref().expect(&at);
                let readiness = container.readiness_probe.as_ref().expect(&at);
                if is_platform(container) {
                    check_http_probes(container, liveness, readiness, &at);
                }
            }
        }
    }
}

/// A platform binary's probes: `/healthz` and `/readyz` on the port named `http`, which is the
/// port of the address flag the binary serves them on.
fn check_http_probes(
    container: &Container,
    liveness: &k8s_openapi::api::core::v1::Probe,
    readiness: &k8s_openapi::api::core::v1::Probe,
    at: &str,
) {
    let http = |probe: &k8s_openapi::api::core::v1::Probe| {
        let get = probe.http_get.as_ref().expect(at);
        (get.path.clone().unwrap_or_default(), get.port.clone())
    };
    let named = IntOrString::String("http".into());
    assert_eq!(http(liveness), ("/healthz".to_owned(), named.clone()), "{at}");
    assert_eq!(http(readiness), ("/readyz".to_owned(), named), "{at}");
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect(at)
        .container_port;
    let args = container.args.clone().unwrap_or_default();
    let address = args
        .iter()
        .find_map(|a| a.strip_prefix("--http-addr=").or_else(|| a.strip_prefix("--addr=")))
        .unwrap_or_else(|| panic!("{at}: passes its HTTP address"));
    assert_eq!(address, format!("0.0.0.0:{port}"), "{at}");
}

fn rules_of(policy: &[PolicyRule]) -> BTreeSet<Permission> {
    let mut permissions = BTreeSet::new();
    for rule in policy {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none(), "{rule:?}");
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    permissions.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    permissions
}

/// What each ServiceAccount of the chart may do, from its (Cluster)RoleBindings.
fn granted(objects: &[Value]) -> BTreeMap<String, BTreeSet<Permission>> {
    let mut roles: BTreeMap<(String, String), BTreeSet<Permission>> = BTreeMap::new();
    for object in of_kind(objects, "ClusterRole").into_iter().chain(of_kind(objects, "Role")) {
        let rules: Vec<PolicyRule> =
            serde_json::from_value(object["rules"].clone()).unwrap_or_default();
        roles.insert((kind(object).to_owned(), name(object).to_owned()), rules_of(&rules));
    }
    let mut by_account: BTreeMap<String, BTreeSet<Permission>> = BTreeMap::new();
    for binding in
        of_kind(objects, "ClusterRoleBinding").into_iter().chain(of_kind(objects, "RoleBinding"))
    {
        let role_ref = &binding["roleRef"];
        let key = (
            role_ref["kind"].as_str().unwrap().to_owned(),
            role_ref["name"].as_str().unwrap().to_owned(),
        );
        let permissions = roles.get(&key).unwrap_or_else(|| {
            panic!("{} binds {key:?}, which the chart does not render", name(binding))
        });
        for subject in binding["subjects"].as_array().unwrap() {
            assert_eq!(subject["kind"], "ServiceAccount", "{}", name(binding));
            assert_eq!(subject["namespace"], NAMESPACE, "{}", name(binding));
            let account = subject["name"].as_str().unwrap().to_owned();
            by_account.entry(account).or_default().extend(permissions.iter().cloned());
        }
    }
    by_account
}

#[test]
fn each_component_is_granted_exactly_the_rbac_the_readme_maps_to_its_code() {
    let documented = support::readme_rbac();
    assert_eq!(
        documented.keys().map(String::as_str).collect::<Vec<_>>(),
        ["api-gateway", "executor", "operator"],
        "the README maps every component"
    );
    for (label, objects) in rendered_variants() {
        let granted = granted(&objects);
        let accounts: BTreeSet<String> =
            of_kind(&objects, "ServiceAccount").iter().map(|o| name(o).to_owned()).collect();
        assert_eq!(accounts, granted.keys().cloned().collect(), "{label}: each account is bound");
        for (component, expected) in &documented {
            let account = format!("kubefaas-{component}");
            let actual = granted.get(&account).cloned().unwrap_or_default();
            assert_eq!(
                &actual,
                expected,
                "{label}: {account} is granted other permissions than the README's table says \
                 (granted beyond it: {:?}; documented, not granted: {:?})",
                actual.difference(expected).collect::<Vec<_>>(),
                expected.difference(&actual).collect::<Vec<_>>()
            );
            assert!(actual.iter().all(|(g, r, v)| g != "*" && r != "*" && v != "*"));
            assert!(actual.iter().all(|(_, r, _)| r != "secrets"), "{account} reads no Secret");
        }
        for (workload, template) in pod_templates(&objects) {
            let spec = template.spec.unwrap();
            let Some(account) = spec.service_account_name else {
                // Only the in-chart databases, which never talk to the Kubernetes API.
                assert_eq!(spec.automount_service_account_token, Some(false), "{workload}");
                continue;
            };
            assert!(granted.contains_key(&account), "{label}: {workload} runs as {account}");
        }
    }
}

#[test]
fn operator_rbac_is_a_role_in_the_watched_namespace_when_it_watches_one() {
    let values = TempValues::new("operator:\n  watchNamespace: team-a\n");
    let objects = render(std::slice::from_ref(&values.0));
    let role = of_kind(&objects, "Role");
    assert_eq!(role.len(), 1);
    assert_eq!(
        (name(role[0]), role[0]["metadata"]["namespace"].as_str()),
        ("kubefaas-operator", Some("team-a"))
    );
    assert!(of_kind(&objects, "ClusterRole").iter().all(|r| name(r) != "kubefaas-operator"));
    let operator = &of_kind(&objects, "Deployment")
        .into_iter()
        .find(|d| name(d) == "kubefaas-operator")
        .unwrap()["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(operator.as_array().unwrap().contains(&json!("--namespace=team-a")));
}

fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    assert!(selector.match_expressions.is_none(), "only matchLabels are checked");
    selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
}

/// A runtime pod exactly as the executor's kubernetes backend builds it.
fn executors_runtime_pod(namespace: &str) -> Pod {
    let resource: kubefaas_core::resources::Function = serde_json::from_value(json!({
        "apiVersion": "kubefaas.io/v1alpha1", "kind": "Function",
        "metadata": {"name": "hello", "namespace": namespace, "uid": "u-1"},
        "spec": {"runtime": "python", "handler": "main.handler", "code": {"inline": "x"}},
    }))
    .unwrap();
    let code = Code::File { name: "main.py".into(), contents: b"x".to_vec() };
    let spec =
        FunctionSpec::new("hello", kubefaas_executor::Language::Python, "main.handler", code)
            .unwrap();
    let function = ResolvedFunction {
        id: uuid::Uuid::nil(),
        spec: Arc::new(spec),
        env_from: Vec::new(),
        env_from_error: None,
        scaling: Scaling::default(),
        max_concurrency: 1,
    };
    let runtime = kubefaas_core::runtime::lookup("python").unwrap();
    runtime_pod(&KubernetesConfig::new("kubefaas-executor-0"), &resource, &function, runtime)
}

#[test]
fn runtime_network_policy_admits_only_executors_to_the_runtime_pods_the_executor_makes() {
    for (label, objects) in rendered_variants() {
        let policies: Vec<NetworkPolicy> = of_kind(&objects, "NetworkPolicy")
            .into_iter()
            .map(|p| serde_json::from_value(p.clone()).unwrap())
            .collect();
        let namespaces: BTreeSet<String> =
            policies.iter().filter_map(|p| p.metadata.namespace.clone()).collect();
        let expected: BTreeSet<String> = match label {
            "values-all.yaml" => ["functions".into(), "team-a".into()].into(),
            "values-cluster.yaml" => ["default".into(), "kubefaas-e2e".into()].into(),
            _ => ["default".into()].into(),
        };
        assert_eq!(namespaces, expected, "{label}: one policy per runtime namespace");

        let executor_pods: Vec<BTreeMap<String, String>> = pod_templates(&objects)
            .into_iter()
            .filter(|(workload, _)| workload == "kubefaas-executor")
            .map(|(_, t)| t.metadata.unwrap().labels.unwrap())
            .collect();
        assert_eq!(executor_pods.len(), 1, "{label}");
        for policy in &policies {
            let namespace = policy.metadata.namespace.clone().unwrap();
            let runtime = executors_runtime_pod(&namespace);
            let runtime_labels = runtime.metadata.labels.clone().unwrap();
            let spec = policy.spec.as_ref().unwrap();
            let selector = spec.pod_selector.as_ref().expect("a pod selector (none selects all)");
            assert!(matches(selector, &runtime_labels), "{label}: selects runtime pods");
            for (workload, template) in pod_templates(&objects) {
                let labels = template.metadata.unwrap().labels.unwrap_or_default();
                assert!(!matches(selector, &labels), "{label}: leaves {workload} alone");
            }
            assert_eq!(
                spec.policy_types,
                Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
                "{label}: ingress and egress are both restricted"
            );
            let ingress = spec.ingress.as_ref().unwrap();
            assert_eq!(ingress.len(), 1, "{label}");
            let peers = ingress[0].from.as_ref().unwrap();
            assert_eq!(peers.len(), 1, "{label}: only the executors");
            let namespace_selector = peers[0].namespace_selector.as_ref().unwrap();
            let release_namespace =
                BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), NAMESPACE.to_owned())]);
            assert!(matches(namespace_selector, &release_namespace), "{label}");
            let pod_selector = peers[0].pod_selector.as_ref().unwrap();
            assert!(matches(pod_selector, &executor_pods[0]), "{label}: admits the executors");
            assert!(!matches(pod_selector, &runtime_labels), "{label}: not runtime pods");
            let watchdog = KubernetesConfig::new("x").port;
            let runtime_port = runtime.spec.as_ref().unwrap().containers[0].ports.as_ref().unwrap()
                [0]
            .container_port;
            assert_eq!(i32::from(watchdog), runtime_port);
            let ports = ingress[0].ports.as_ref().unwrap();
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].port, Some(IntOrString::Int(runtime_port)), "{label}");
            let egress = spec.egress.clone().unwrap_or_default();
            if label == "values-all.yaml" {
                assert_eq!(egress.len(), 1, "{label}: the egress rules given");
            } else {
                assert!(egress.is_empty(), "{label}: no egress by default");
            }
        }
    }
}

fn env_of(container: &Container) -> Vec<EnvVar> {
    container.env.clone().unwrap_or_default()
}

/// Variables the binaries read that are not clap flags: `POD_NAME` (the operator's event
/// reporter instance, the executor's default name; also what `$(POD_NAME)` expands from) and
/// `RUST_LOG` (the tracing filter).
const NOT_FLAGS: [&str; 2] = ["POD_NAME", "RUST_LOG"];

#[test]
fn binaries_accept_every_flag_value_and_variable_the_chart_passes() {
    for (label, objects) in rendered_variants() {
        let mut seen = BTreeSet::new();
        for (workload, template) in pod_templates(&objects) {
            let spec: PodSpec = template.spec.unwrap();
            for container in spec.containers.iter().filter(|c| is_platform(c)) {
                let at = format!("{label}: {workload}/{}", container.name);
                let binary = BINARIES.iter().find(|(c, _)| *c == container.name).unwrap().1;
                seen.insert(binary);
                let args = container.args.clone().unwrap_or_default();
                assert!(container.command.is_none(), "{at}: runs the image's entrypoint");
                // clap parses every argument, values included, before it acts on `--help`: a
                // flag the binary does not have, or a value it cannot parse, fails here.
                let output = Command::new(support::binary(binary))
                    .args(&args)
                    .arg("--help")
                    .env_clear()
                    .output()
                    .unwrap();
                let help = String::from_utf8_lossy(&output.stdout);
                assert!(
                    output.status.success(),
                    "{at}: {binary} refuses {args:?}:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let env = env_of(container);
                for variable in &env {
                    if !NOT_FLAGS.contains(&variable.name.as_str()) {
                        assert!(
                            help.contains(&format!("[env: {}=", variable.name)),
                            "{at}: {binary} does not read {}",
                            variable.name
                        );
                    }
                }
                for required in ["DATABASE_URL", "REDIS_URL", "KUBEFAAS_QUEUE_PREFIX"] {
                    assert!(env.iter().any(|v| v.name == required), "{at}: sets {required}");
                }
                // `$(NAME)` in an argument expands only from the container's own variables.
                for arg in &args {
                    if let Some((_, rest)) = arg.split_once("$(") {
                        let variable = rest.split(')').next().unwrap();
                        assert!(env.iter().any(|v| v.name == variable), "{at}: {arg}");
                    }
                }
            }
        }
        assert_eq!(seen.len(), BINARIES.len(), "{label}: every binary runs");
    }
}

fn container_of(objects: &[Value], workload: &str) -> Container {
    let (_, template) = pod_templates(objects)
        .into_iter()
        .find(|(name, _)| name == workload)
        .unwrap_or_else(|| panic!("no workload {workload}"));
    template.spec.unwrap().containers.remove(0)
}

#[test]
fn gateway_requires_tokens_unless_auth_is_switched_off_explicitly() {
    let default = render(&[]);
    let args = container_of(&default, "kubefaas-api-gateway").args.unwrap();
    assert!(args.contains(&"--auth=token".to_owned()), "{args:?}");
    let kind = render(&variants()[1].1);
    let args = container_of(&kind, "kubefaas-api-gateway").args.unwrap();
    assert!(args.contains(&"--auth=token".to_owned()), "kind keeps tokens on: {args:?}");

    let off = TempValues::new("gateway:\n  auth: none\n");
    let objects = render(std::slice::from_ref(&off.0));
    let args = container_of(&objects, "kubefaas-api-gateway").args.unwrap();
    assert!(args.contains(&"--auth=none".to_owned()), "{args:?}");

    let wrong = TempValues::new("gateway:\n  auth: false\n");
    let output = support::helm("template", std::slice::from_ref(&wrong.0));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("gateway.auth must be"));
}

#[test]
fn executor_is_a_stateful_set_whose_pods_run_the_kubernetes_backend_under_their_own_name() {
    for (label, objects) in rendered_variants() {
        let sets = of_kind(&objects, "StatefulSet");
        assert_eq!(sets.len(), 1, "{label}");
        let set: StatefulSet = serde_json::from_value(sets[0].clone()).unwrap();
        assert_eq!(set.metadata.name.as_deref(), Some("kubefaas-executor"));
        let service = set.spec.as_ref().unwrap().service_name.clone().unwrap();
        let headless = of_kind(&objects, "Service")
            .into_iter()
            .find(|s| name(s) == service)
            .unwrap_or_else(|| panic!("{label}: the governing Service {service}"));
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let container = container_of(&objects, "kubefaas-executor");
        let args = container.args.clone().unwrap();
        assert!(args.contains(&"--backend=kubernetes".to_owned()), "{label}: {args:?}");
        assert!(args.contains(&"--name=$(POD_NAME)".to_owned()), "{label}: {args:?}");
        let pod_name = env_of(&container).into_iter().find(|v| v.name == "POD_NAME").unwrap();
        let field = pod_name.value_from.unwrap().field_ref.unwrap().field_path;
        assert_eq!(field, "metadata.name", "{label}");
    }
}

#[test]
fn database_and_redis_urls_come_from_secrets_external_by_default_in_chart_for_kind() {
    let secret_of = |container: &Container, variable: &str| {
        let reference = env_of(container)
            .into_iter()
            .find(|v| v.name == variable)
            .and_then(|v| v.value_from?.secret_key_ref)
            .unwrap_or_else(|| panic!("{variable} comes from a Secret"));
        (reference.name, reference.key)
    };
    let default = render(&[]);
    assert!(of_kind(&default, "Secret").is_empty(), "the chart makes no Secret by default");
    for (container, _) in BINARIES {
        let container = container_of(&default, &format!("kubefaas-{container}"));
        assert_eq!(
            secret_of(&container, "DATABASE_URL"),
            ("kubefaas-database".into(), "url".into())
        );
        assert_eq!(secret_of(&container, "REDIS_URL"), ("kubefaas-redis".into(), "url".into()));
    }
    let kind = render(&variants()[1].1);
    let secrets: BTreeSet<&str> = of_kind(&kind, "Secret").into_iter().map(name).collect();
    for (container, _) in BINARIES {
        let container = container_of(&kind, &format!("kubefaas-{container}"));
        for variable in ["DATABASE_URL", "REDIS_URL"] {
            let (secret, key) = secret_of(&container, variable);
            assert!(secrets.contains(secret.as_str()), "kind renders the Secret {secret}");
            assert_eq!(key, "url");
        }
    }
    for workload in ["kubefaas-postgresql", "kubefaas-redis"] {
        container_of(&kind, workload);
        assert!(of_kind(&kind, "Service").iter().any(|s| name(s) == workload));
    }
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let listing = |dir: PathBuf| -> BTreeMap<String, String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect()
    };
    let generated = listing(support::repo_root().join("crds"));
    let chart = listing(support::chart_dir().join("crds"));
    assert!(!generated.is_empty());
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        chart.keys().collect::<Vec<_>>(),
        "charts/kubefaas/crds has the files of crds/ (run `make crds`)"
    );
    for (file, text) in &generated {
        assert!(
            &chart[file] == text,
            "charts/kubefaas/crds/{file} differs from crds/ (run `make crds`)"
        );
    }
}

/// Dockerfile instructions with continuation lines joined and comments dropped.
fn dockerfile(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(support::repo_root().join(path)).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(&format!("{part} ")),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn platform_dockerfile_has_a_non_root_target_for_each_image_the_chart_runs() {
    let instructions = dockerfile("runtime-images/platform/Dockerfile");
    let values: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(support::chart_dir().join("values.yaml")).unwrap(),
    )
    .unwrap();
    let build = instructions
        .iter()
        .find(|i| i.starts_with("RUN ") && i.contains("cargo build"))
        .expect("a RUN instruction that builds the binaries");
    let base = instructions.iter().position(|i| i.ends_with(" AS base")).unwrap();
    let user = instructions[base..].iter().find_map(|i| i.strip_prefix("USER ")).unwrap();
    assert_eq!(user, "65532:65532", "the uid the chart's podSecurityContext sets");
    assert_eq!(values["podSecurityContext"]["runAsUser"], 65532);
    for (component, binary) in BINARIES {
        let key = if component == "api-gateway" { "gateway" } else { component };
        assert_eq!(values[key]["image"]["repository"], format!("kubefaas/{component}"));
        assert!(build.contains(&format!("--bin {binary}")), "{build}");
        let stage = instructions
            .iter()
            .position(|i| i == &format!("FROM base AS {component}"))
            .unwrap_or_else(|| panic!("a target {component} on the non-root base"));
        let tail = &instructions[stage + 1..];
        let end = tail.iter().position(|i| i.starts_with("FROM ")).unwrap_or(tail.len());
        let stage = &tail[..end];
        assert!(stage.iter().all(|i| !i.starts_with("USER ")), "{component} keeps the base's user");
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{component}: runs {binary}"
        );
    }
    // `COPY . .` of the repository root: the context must exist and leave out build output.
    let ignored = std::fs::read_to_string(support::repo_root().join(".dockerignore")).unwrap();
    assert!(ignored.lines().any(|l| l == "target") && ignored.lines().any(|l| l == ".git"));
}

#[test]
fn kind_loads_every_runtime_image_of_the_catalogue() {
    let makefile = std::fs::read_to_string(support::repo_root().join("Makefile")).unwrap();
    let listed: BTreeSet<&str> = makefile
        .lines()
        .find_map(|l| l.strip_prefix("RUNTIME_IMAGES := "))
        .expect("RUNTIME_IMAGES in the Makefile")
        .split_whitespace()
        .collect();
    let catalogue: BTreeSet<&str> =
        kubefaas_core::runtime::CATALOGUE.iter().map(|r| r.image).collect();
    assert_eq!(listed, catalogue);
}
