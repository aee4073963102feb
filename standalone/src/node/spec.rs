//! What to run for a pod: the pure translation of a container spec into a local program, its
//! environment, limits and directories. No I/O here, so every rule is unit-tested from
//! fixtures.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use kubefaas_core::{
    env_from::{EnvSource, SourceKind},
    runtime, validation,
};

use super::cgroup::Limits;

/// Environment variables of the watchdog the agent sets or rewrites (the watchdog's own
/// `kubefaas_executor::watchdog::env`; this crate must not depend on the executor).
pub(crate) mod watchdog_env {
    pub(crate) const RUNTIME: &str = "KUBEFAAS_RUNTIME";
    pub(crate) const CODE_DIR: &str = "KUBEFAAS_CODE_DIR";
    pub(crate) const WORK_DIR: &str = "KUBEFAAS_WORK_DIR";
    pub(crate) const LISTEN: &str = "KUBEFAAS_LISTEN";
    pub(crate) const SANDBOX: &str = "KUBEFAAS_SANDBOX";
    /// The watchdog's defaults when the container names none.
    pub(crate) const DEFAULT_CODE_DIR: &str = "/var/task";
    pub(crate) const DEFAULT_WORK_DIR: &str = "/tmp/kubefaas";
    pub(crate) const DEFAULT_PORT: u16 = 8080;
}

/// The program name of the runtime images' entrypoint.
pub(crate) const WATCHDOG: &str = "kubefaas-watchdog";

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
    /// An empty directory that lives as long as the pod.
    EmptyDir,
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
        } else if empty_dir.is_some() {
            VolumeSource::EmptyDir
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

/// How one container runs here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Arguments for the watchdog (the container's `args`, paths translated).
    pub(crate) args: Vec<String>,
    /// The whole environment of the watchdog (nothing is inherited from the agent but `PATH`).
    pub(crate) env: BTreeMap<String, String>,
    /// Memory and CPU limits.
    pub(crate) limits: Limits,
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

/// Translates `container` of a pod into a plan, with `root` the directory standing in for the
/// container's root file system, `volume_dir` where each volume is materialised and `env_from`
/// the variables of its `envFrom` (its `env` overrides them).
pub(crate) fn plan(
    container: &Container,
    ip: Ipv4Addr,
    root: &Path,
    volume_dir: &dyn Fn(&str) -> PathBuf,
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
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        mounts.push((m.mount_path.trim_end_matches('/').to_owned(), m.name.clone()));
    }
    // Longest mount path first, so nested mounts win.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.0.len()));
    let host_path = |path: &str| -> String {
        for (mount, volume) in &mounts {
            if let Some(rest) = path.strip_prefix(mount.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{}{rest}", volume_dir(volume).display());
            }
        }
        match path.strip_prefix('/') {
            Some(rest) => root.join(rest).display().to_string(),
            None => path.to_owned(),
        }
    };

    let mut env = env_from;
    for var in container.env.iter().flatten() {
        if var.value_from.is_some() {
            return Err(refuse(
                "CreateContainerConfigError",
                format!("env {:?}: valueFrom is not supported by the node agent", var.name),
            ));
        }
        env.insert(var.name.clone(), var.value.clone().unwrap_or_default());
    }
    env.entry(watchdog_env::RUNTIME.into()).or_insert_with(|| runtime.name.to_owned());
    for (key, default) in [
        (watchdog_env::CODE_DIR, watchdog_env::DEFAULT_CODE_DIR),
        (watchdog_env::WORK_DIR, watchdog_env::DEFAULT_WORK_DIR),
    ] {
        let value = env.get(key).map_or(default, String::as_str);
        let translated = host_path(value);
        env.insert(key.to_owned(), translated);
    }
    let declared_port =
        container.ports.iter().flatten().next().and_then(|p| u16::try_from(p.container_port).ok());
    let port = env
        .get(watchdog_env::LISTEN)
        .and_then(|l| l.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .or(declared_port)
        .unwrap_or(watchdog_env::DEFAULT_PORT);
    env.insert(watchdog_env::LISTEN.into(), format!("{ip}:{port}"));

    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let quantity = |name: &str| limits.and_then(|l| l.get(name)).map(|q| q.0.clone());
    let bad = |what: &str, e: String| {
        refuse("CreateContainerConfigError", format!("resources.limits.{what}: {e}"))
    };
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
        args: container.args.iter().flatten().map(|a| host_path(a)).collect(),
        env,
        limits,
        port,
        ready_path: probe.and_then(|h| h.path.clone()).unwrap_or_else(|| "/healthz".into()),
    })
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
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let env_from = [("GREETING".to_owned(), "from a secret".to_owned())].into();
        plan(
            container,
            Ipv4Addr::new(127, 1, 0, 7),
            Path::new("/pods/p/root"),
            &|v| PathBuf::from(format!("/pods/p/volumes/{v}")),
            env_from,
        )
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
    fn mounted_paths_limits_and_the_listen_address_are_translated() {
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
                {"name": "code", "mountPath": "/var/task"},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 9000}},
        }));
        let plan = plan_of(&pod).unwrap();
        assert_eq!(plan.env["KUBEFAAS_CODE_DIR"], "/pods/p/volumes/code");
        assert_eq!(plan.env["KUBEFAAS_WORK_DIR"], "/pods/p/volumes/tmp/kubefaas");
        assert_eq!(plan.env["KUBEFAAS_LISTEN"], "127.1.0.7:9000");
        assert_eq!(plan.env["KUBEFAAS_RUNTIME"], "python");
        assert_eq!(plan.env["GREETING"], "hi", "env overrides envFrom");
        assert_eq!(plan.port, 9000);
        assert_eq!(plan.limits, Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(250) });
    }

    #[test]
    fn unmounted_paths_land_in_the_pods_private_root() {
        let pod = pod(json!({"name": "c", "image": "kubefaas/runtime-go:1.22"}));
        let plan = plan_of(&pod).unwrap();
        assert_eq!(plan.env["KUBEFAAS_WORK_DIR"], "/pods/p/root/tmp/kubefaas");
        assert_eq!(plan.env["KUBEFAAS_LISTEN"], "127.1.0.7:8080");
        assert_eq!(plan.env["GREETING"], "from a secret");
        assert_eq!(plan.limits, Limits::default());
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
}
