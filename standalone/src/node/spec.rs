//! What to run for a pod: the pure translation of a container spec into a container of this
//! machine: its program, environment, user, limits and mounts. No I/O here, so every rule is
//! unit-tested from fixtures. A spec that asks for something the agent cannot enforce is
//! refused ([`Refusal`]), never run with less.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use kubefaas_core::{
    env_from::{EnvSource, SourceKind},
    runtime, validation,
};

/// Environment variables of the watchdog the agent sets or rewrites (the watchdog's own
/// `kubefaas_executor::watchdog::env`; this crate must not depend on the executor).
pub(crate) mod watchdog_env {
    pub(crate) const RUNTIME: &str = "KUBEFAAS_RUNTIME";
    pub(crate) const LISTEN: &str = "KUBEFAAS_LISTEN";
    /// The watchdog's port when the container names none.
    pub(crate) const DEFAULT_PORT: u16 = 8080;
}

/// The program name of the runtime images' entrypoint.
pub(crate) const WATCHDOG: &str = "kubefaas-watchdog";

/// The user and group of the runtime images (`USER 65532:65532` in their Dockerfiles): what a
/// container runs as when its security context names no user, as the image's `USER` would.
pub(crate) const IMAGE_USER: u32 = 65532;

/// Limits of one container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Memory limit in bytes, if any.
    pub(crate) memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a core, if any.
    pub(crate) cpu_millis: Option<u64>,
}

/// Who a container's processes are and what they may gain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Security {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// `fsGroup` and `supplementalGroups`.
    pub(crate) groups: Vec<u32>,
    /// `allowPrivilegeEscalation: false` (set-uid programs cannot run anyway: every host
    /// directory is mounted `nosuid`).
    pub(crate) no_new_privileges: bool,
}

/// Why a container cannot run here: the waiting reason and message it is reported with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `ErrImagePull`, `CreateContainerConfigError`, …
    pub(crate) reason: &'static str,
    /// What to fix.
    pub(crate) message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// A volume of the pod as a directory on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum VolumeSource {
    /// The keys of this ConfigMap (all, or the listed `items` as `key → path`) as files.
    ConfigMap { name: String, items: Vec<(String, String)>, optional: bool },
    /// An empty directory that lives as long as the pod, at most `size_limit` bytes
    /// (`sizeLimit`; the agent's default when `None`).
    EmptyDir { size_limit: Option<u64> },
}

/// The pod's volumes by name.
pub(crate) fn volumes(pod: &Pod) -> Result<BTreeMap<String, VolumeSource>, Refusal> {
    let mut out = BTreeMap::new();
    for Volume { name, config_map, empty_dir, .. } in
        pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).into_iter().flatten()
    {
        let source = if let Some(cm) = config_map {
            VolumeSource::ConfigMap {
                name: cm.name.clone(),
                items: cm.items.iter().flatten().map(|i| (i.key.clone(), i.path.clone())).collect(),
                optional: cm.optional.unwrap_or(false),
            }
        } else if let Some(empty_dir) = empty_dir {
            if empty_dir.medium.as_deref().is_some_and(|m| !m.is_empty() && m != "Memory") {
                return Err(refuse(
                    "CreateContainerConfigError",
                    format!("volume {name:?}: emptyDir.medium must be \"\" or \"Memory\""),
                ));
            }
            let size_limit = empty_dir
                .size_limit
                .as_ref()
                .map(|q| validation::parse_memory_bytes(&q.0))
                .transpose()
                .map_err(|e| {
                    refuse(
                        "CreateContainerConfigError",
                        format!("volume {name:?}: emptyDir.sizeLimit: {e}"),
                    )
                })?;
            VolumeSource::EmptyDir { size_limit }
        } else {
            return Err(refuse(
                "CreateContainerConfigError",
                format!(
                    "volume {name:?}: only configMap and emptyDir volumes run on the node agent"
                ),
            ));
        };
        out.insert(name.clone(), source);
    }
    Ok(out)
}

/// A volume mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct VolumeMount {
    /// The pod's volume.
    pub(crate) volume: String,
    /// Where it appears in the container (absolute, no `..`).
    pub(crate) path: String,
    pub(crate) read_only: bool,
}

/// How one container runs here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Arguments for the watchdog (the container's `args`).
    pub(crate) args: Vec<String>,
    /// The container's own environment (`envFrom`, then `env`); the agent adds `PATH`.
    pub(crate) env: BTreeMap<String, String>,
    /// Memory and CPU limits.
    pub(crate) limits: Limits,
    /// The user and privileges.
    pub(crate) security: Security,
    /// The pod's volumes this container mounts.
    pub(crate) mounts: Vec<VolumeMount>,
    /// The address the watchdog listens on: the pod's own loopback address.
    pub(crate) port: u16,
    /// The path of the HTTP readiness check.
    pub(crate) ready_path: String,
}

/// The runtime of an image of the catalogue: `kubefaas/runtime-python:3.13`, with or without
/// a registry prefix.
pub(crate) fn runtime_of(image: &str) -> Option<&'static runtime::Runtime> {
    runtime::CATALOGUE
        .iter()
        .find(|r| image == r.image || image.strip_suffix(r.image).is_some_and(|p| p.ends_with('/')))
}

/// The container's `envFrom` entries, for [`kubefaas_core::env_from::resolve`].
pub(crate) fn env_sources(container: &Container) -> Vec<EnvSource> {
    let mut out = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.config_map_ref {
            out.push(EnvSource {
                kind: SourceKind::ConfigMap,
                name: r.name.clone(),
                prefix: prefix.clone(),
                optional: r.optional.unwrap_or(false),
            });
        }
        if let Some(r) = &source.secret_ref {
            out.push(EnvSource {
                kind: SourceKind::Secret,
                name: r.name.clone(),
                prefix,
                optional: r.optional.unwrap_or(false),
            });
        }
    }
    out
}

/// Translates `container` of `pod` into a plan, with `env_from` the variables of its
/// `envFrom` (its `env` overrides them).
pub(crate) fn plan(
    pod: &PodSpec,
    container: &Container,
    ip: Ipv4Addr,
    env_from: BTreeMap<String, String>,
) -> Result<Plan, Refusal> {
    let image = container.image.clone().unwrap_or_default();
    let runtime = runtime_of(&image).ok_or_else(|| {
        refuse(
            "ErrImagePull",
            format!(
                "image {image:?} is not a kubefaas runtime image; the node agent runs only {}",
                runtime::CATALOGUE.iter().map(|r| r.image).collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    if let Some(command) = container.command.as_ref().and_then(|c| c.first())
        && Path::new(command).file_name().and_then(|n| n.to_str()) != Some(WATCHDOG)
    {
        return Err(refuse(
            "CreateContainerError",
            format!("command {command:?}: the node agent runs only the image's {WATCHDOG}"),
        ));
    }
    let config_error = |message: String| refuse("CreateContainerConfigError", message);
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let path = m.mount_path.trim_end_matches('/');
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return Err(config_error(format!(
                "volumeMounts {:?}: mountPath must be an absolute path without \"..\"",
                m.name
            )));
        }
        if m.sub_path.as_deref().is_some_and(|p| !p.is_empty())
            || m.sub_path_expr.as_deref().is_some_and(|p| !p.is_empty())
        {
            return Err(config_error(format!(
                "volumeMounts {:?}: subPath is not supported by the node agent",
                m.name
            )));
        }
        mounts.push(VolumeMount {
            volume: m.name.clone(),
            path: path.to_owned(),
            read_only: m.read_only.unwrap_or(false),
        });
    }

    let mut env = env_from;
    for var in container.env.iter().flatten() {
        if var.value_from.is_some() {
            return Err(config_error(format!(
                "env {:?}: valueFrom is not supported by the node agent",
                var.name
            )));
        }
        env.insert(var.name.clone(), var.value.clone().unwrap_or_default());
    }
    env.entry(watchdog_env::RUNTIME.into()).or_insert_with(|| runtime.name.to_owned());
    let declared_port =
        container.ports.iter().flatten().next().and_then(|p| u16::try_from(p.container_port).ok());
    let port = env
        .get(watchdog_env::LISTEN)
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .or(declared_port)
        .unwrap_or(watchdog_env::DEFAULT_PORT);
    // The host's network namespace: the pod's own loopback address stands for its IP.
    env.insert(watchdog_env::LISTEN.into(), format!("{ip}:{port}"));

    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let quantity = |name: &str| limits.and_then(|l| l.get(name)).map(|q| q.0.clone());
    let bad = |what: &str, e: String| config_error(format!("resources.limits.{what}: {e}"));
    let limits = Limits {
        memory_bytes: quantity("memory")
            .map(|q| validation::parse_memory_bytes(&q))
            .transpose()
            .map_err(|e| bad("memory", e))?,
        cpu_millis: quantity("cpu")
            .map(|q| validation::parse_cpu_millis(&q))
            .transpose()
            .map_err(|e| bad("cpu", e))?,
    };
    let probe = container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref());
    Ok(Plan {
        args: container.args.clone().unwrap_or_default(),
        env,
        limits,
        security: security(pod, container)?,
        mounts,
        port,
        ready_path: probe.and_then(|h| h.path.clone()).unwrap_or_else(|| "/healthz".into()),
    })
}

/// The container's user and privileges from the pod's and the container's security context
/// (the container's wins), as a kubelet reads them. What the agent cannot enforce is refused:
/// privileged containers, added capabilities, host namespaces beyond the network, sysctls,
/// SELinux and AppArmor profiles, `Localhost` seccomp profiles, unmasked `/proc`. What it
/// always does is stricter than any spec: no capabilities at all, a read-only root file system,
/// the `RuntimeDefault`-like seccomp profile of `oci.rs`, `nosuid` host directories.
pub(crate) fn security(pod: &PodSpec, container: &Container) -> Result<Security, Refusal> {
    let refused = |field: &str, why: &str| {
        refuse(
            "CreateContainerConfigError",
            format!("{field}: {why}; the node agent cannot enforce it and does not run it weaker"),
        )
    };
    let psc = pod.security_context.clone().unwrap_or_default();
    let csc = container.security_context.clone().unwrap_or_default();
    let c = "securityContext";
    if pod.host_pid == Some(true) || pod.host_ipc == Some(true) {
        return Err(refused("spec.hostPID/hostIPC", "host namespaces are not shared"));
    }
    if psc.sysctls.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(refused("spec.securityContext.sysctls", "sysctls are not applied"));
    }
    if csc.privileged == Some(true) {
        return Err(refused(&format!("{c}.privileged"), "privileged containers do not run here"));
    }
    if csc.capabilities.as_ref().and_then(|c| c.add.as_ref()).is_some_and(|a| !a.is_empty()) {
        return Err(refused(&format!("{c}.capabilities.add"), "containers hold no capability"));
    }
    if csc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        return Err(refused(&format!("{c}.procMount"), "/proc is always masked"));
    }
    if psc.se_linux_options.is_some() || csc.se_linux_options.is_some() {
        return Err(refused("securityContext.seLinuxOptions", "SELinux is not used"));
    }
    let apparmor = csc.app_armor_profile.as_ref().or(psc.app_armor_profile.as_ref());
    if apparmor.is_some_and(|p| p.type_ != "Unconfined") {
        return Err(refused("securityContext.appArmorProfile", "AppArmor is not used"));
    }
    let seccomp = csc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref());
    if seccomp.is_some_and(|p| p.type_ == "Localhost") {
        return Err(refused("securityContext.seccompProfile", "Localhost profiles are not loaded"));
    }
    let id = |field: &str, value: Option<i64>| -> Result<Option<u32>, Refusal> {
        value.map(|v| u32::try_from(v).map_err(|_| config_error_field(field, v))).transpose()
    };
    let uid = id("runAsUser", csc.run_as_user.or(psc.run_as_user))?.unwrap_or(IMAGE_USER);
    let gid = id("runAsGroup", csc.run_as_group.or(psc.run_as_group))?.unwrap_or(IMAGE_USER);
    let non_root = csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false);
    if non_root && uid == 0 {
        return Err(refuse(
            "CreateContainerConfigError",
            "securityContext.runAsNonRoot is true but runAsUser is 0 (root)",
        ));
    }
    let mut groups = Vec::new();
    for g in psc.fs_group.into_iter().chain(psc.supplemental_groups.into_iter().flatten()) {
        let g = id("supplementalGroups", Some(g))?.unwrap_or_default();
        if !groups.contains(&g) && g != gid {
            groups.push(g);
        }
    }
    Ok(Security {
        uid,
        gid,
        groups,
        no_new_privileges: csc.allow_privilege_escalation != Some(true),
    })
}

fn config_error_field(field: &str, value: i64) -> Refusal {
    refuse(
        "CreateContainerConfigError",
        format!("securityContext.{field}: {value} is not a valid id (0 to 4294967295)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {
                "containers": [container],
                "volumes": [
                    {"name": "code", "configMap": {"name": "hello-code"}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        }))
        .unwrap()
    }

    fn plan_of(pod: &Pod) -> Result<Plan, Refusal> {
        let spec = pod.spec.as_ref().unwrap();
        let env_from = [("GREETING".to_owned(), "from a secret".to_owned())].into();
        plan(spec, &spec.containers[0], Ipv4Addr::new(127, 1, 0, 7), env_from)
    }

    #[test]
    fn runtime_images_are_recognised_with_or_without_a_registry() {
        assert_eq!(runtime_of("kubefaas/runtime-python:3.13").map(|r| r.name), Some("python"));
        assert_eq!(
            runtime_of("registry.example:5000/kubefaas/runtime-nodejs:22").map(|r| r.name),
            Some("nodejs22")
        );
        assert!(runtime_of("nginx:1.27").is_none());
        assert!(runtime_of("evilkubefaas/runtime-python:3.13").is_none());
    }

    #[test]
    fn mounts_limits_and_the_listen_address_are_planned() {
        let pod = pod(json!({
            "name": "function",
            "image": "kubefaas/runtime-python:3.13",
            "env": [
                {"name": "KUBEFAAS_CODE_DIR", "value": "/var/task"},
                {"name": "KUBEFAAS_LISTEN", "value": "0.0.0.0:9000"},
                {"name": "GREETING", "value": "hi"},
            ],
            "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
            "volumeMounts": [
                {"name": "code", "mountPath": "/var/task", "readOnly": true},
                {"name": "tmp", "mountPath": "/tmp/"},
            ],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 9000}},
        }));
        let plan = plan_of(&pod).unwrap();
        assert_eq!(plan.env["KUBEFAAS_CODE_DIR"], "/var/task", "paths are the container's");
        assert_eq!(plan.env["KUBEFAAS_LISTEN"], "127.1.0.7:9000");
        assert_eq!(plan.env["KUBEFAAS_RUNTIME"], "python");
        assert_eq!(plan.env["GREETING"], "hi", "env overrides envFrom");
        assert_eq!(plan.port, 9000);
        assert_eq!(plan.limits, Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(250) });
        assert_eq!(
            plan.mounts,
            [
                VolumeMount { volume: "code".into(), path: "/var/task".into(), read_only: true },
                VolumeMount { volume: "tmp".into(), path: "/tmp".into(), read_only: false },
            ]
        );
    }

    #[test]
    fn a_container_without_a_security_context_runs_as_the_images_user() {
        let pod = pod(json!({"name": "c", "image": "kubefaas/runtime-go:1.22"}));
        let plan = plan_of(&pod).unwrap();
        assert_eq!(plan.env["KUBEFAAS_LISTEN"], "127.1.0.7:8080");
        assert_eq!(plan.env["GREETING"], "from a secret");
        assert_eq!(plan.limits, Limits::default());
        let expected = Security { uid: 65532, gid: 65532, groups: vec![], no_new_privileges: true };
        assert_eq!(plan.security, expected);
    }

    fn with_security(pod_context: serde_json::Value, container_context: serde_json::Value) -> Pod {
        let mut pod = pod(json!({
            "name": "c", "image": "kubefaas/runtime-python:3.13",
            "securityContext": container_context,
        }));
        pod.spec.as_mut().unwrap().security_context =
            Some(serde_json::from_value(pod_context).unwrap());
        pod
    }

    #[test]
    fn the_containers_security_context_wins_over_the_pods() {
        let pod = with_security(
            json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                   "supplementalGroups": [3000, 2000]}),
            json!({"runAsUser": 1001, "allowPrivilegeEscalation": true}),
        );
        let security = plan_of(&pod).unwrap().security;
        assert_eq!(
            security,
            Security { uid: 1001, gid: 1000, groups: vec![2000, 3000], no_new_privileges: false }
        );
    }

    #[test]
    fn what_the_agent_cannot_enforce_is_refused_naming_the_field() {
        let cases = [
            (json!({}), json!({"runAsNonRoot": true, "runAsUser": 0}), "runAsNonRoot"),
            (json!({"runAsNonRoot": true, "runAsUser": 0}), json!({}), "runAsNonRoot"),
            (json!({}), json!({"privileged": true}), "privileged"),
            (json!({}), json!({"capabilities": {"add": ["NET_ADMIN"]}}), "capabilities.add"),
            (
                json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "x"}}),
                json!({}),
                "seccompProfile",
            ),
            (
                json!({"sysctls": [{"name": "net.core.somaxconn", "value": "1024"}]}),
                json!({}),
                "sysctls",
            ),
            (json!({}), json!({"seLinuxOptions": {"level": "s0"}}), "seLinuxOptions"),
            (json!({}), json!({"procMount": "Unmasked"}), "procMount"),
            (json!({}), json!({"runAsUser": -1}), "runAsUser"),
        ];
        for (pod_context, container_context, field) in cases {
            let pod = with_security(pod_context, container_context.clone());
            let refusal = plan_of(&pod).unwrap_err();
            assert_eq!(refusal.reason, "CreateContainerConfigError", "{container_context}");
            assert!(refusal.message.contains(field), "{field}: {}", refusal.message);
        }
        let fine = with_security(
            json!({"runAsNonRoot": true, "runAsUser": 65532,
                   "seccompProfile": {"type": "RuntimeDefault"}}),
            json!({"readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}),
        );
        assert!(plan_of(&fine).is_ok());
    }

    #[test]
    fn mount_paths_must_be_absolute_and_sub_paths_are_refused() {
        for mount in [
            json!({"name": "tmp", "mountPath": "tmp"}),
            json!({"name": "tmp", "mountPath": "/a/../etc"}),
            json!({"name": "tmp", "mountPath": "/data", "subPath": "x"}),
        ] {
            let pod = pod(json!({
                "name": "c", "image": "kubefaas/runtime-python:3.13", "volumeMounts": [mount],
            }));
            assert_eq!(plan_of(&pod).unwrap_err().reason, "CreateContainerConfigError");
        }
    }

    #[test]
    fn env_from_entries_become_sources_with_their_prefix_and_optionality() {
        let pod = pod(json!({
            "name": "c", "image": "kubefaas/runtime-python:3.13",
            "envFrom": [
                {"configMapRef": {"name": "settings"}},
                {"secretRef": {"name": "db", "optional": true}, "prefix": "DB_"},
            ],
        }));
        let sources = env_sources(&pod.spec.as_ref().unwrap().containers[0]);
        assert_eq!(
            sources,
            [
                EnvSource {
                    kind: SourceKind::ConfigMap,
                    name: "settings".into(),
                    prefix: String::new(),
                    optional: false,
                },
                EnvSource {
                    kind: SourceKind::Secret,
                    name: "db".into(),
                    prefix: "DB_".into(),
                    optional: true,
                },
            ]
        );
    }

    #[test]
    fn an_image_that_is_not_a_runtime_is_an_image_pull_error() {
        let refusal = plan_of(&pod(json!({"name": "c", "image": "nginx"}))).unwrap_err();
        assert_eq!(refusal.reason, "ErrImagePull");
        assert!(refusal.message.contains("nginx"), "{}", refusal.message);
    }

    #[test]
    fn another_command_than_the_watchdog_is_refused() {
        let pod = pod(json!({
            "name": "c", "image": "kubefaas/runtime-python:3.13", "command": ["sh", "-c", "x"],
        }));
        assert_eq!(plan_of(&pod).unwrap_err().reason, "CreateContainerError");
        let pod = pod_with_command();
        assert!(plan_of(&pod).is_ok());
    }

    fn pod_with_command() -> Pod {
        pod(json!({
            "name": "c", "image": "kubefaas/runtime-python:3.13",
            "command": ["/usr/local/bin/kubefaas-watchdog"],
        }))
    }

    #[test]
    fn volumes_other_than_config_maps_and_empty_dirs_are_refused() {
        let mut p = pod(json!({"name": "c", "image": "kubefaas/runtime-python:3.13"}));
        assert_eq!(volumes(&p).unwrap().len(), 2);
        p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
            serde_json::from_value(json!({"name": "h", "hostPath": {"path": "/etc"}})).unwrap(),
        );
        assert_eq!(volumes(&p).unwrap_err().reason, "CreateContainerConfigError");
    }

    #[test]
    fn empty_dirs_carry_their_size_limit() {
        let mut p = pod(json!({"name": "c", "image": "kubefaas/runtime-python:3.13"}));
        p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
            serde_json::from_value(json!({"name": "s", "emptyDir": {"sizeLimit": "16Mi"}}))
                .unwrap(),
        );
        let volumes = volumes(&p).unwrap();
        assert_eq!(volumes["tmp"], VolumeSource::EmptyDir { size_limit: None });
        assert_eq!(volumes["s"], VolumeSource::EmptyDir { size_limit: Some(16 << 20) });
    }
}
