//! The OCI runtime configuration (`config.json` of a bundle) of one container: the subset of
//! the runtime spec the agent uses, as small serde types, and the pure rules that fill it from
//! a container's plan. No I/O here; `bundle.rs` writes bundles and runs `runc`.
//!
//! Our own types rather than a spec crate: the agent writes a dozen fields and reads none, and
//! the crates that model the whole spec bring builder and derive macros the rest of the
//! workspace does not need.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::spec::{Limits, Security};

/// The spec version the configuration follows (runc 1.1 reads 1.0.x).
const OCI_VERSION: &str = "1.0.2";

/// The CFS period of CPU quotas (100 ms, a kubelet's).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// `config.json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Config {
    oci_version: &'static str,
    process: Process,
    root: Root,
    hostname: String,
    mounts: Vec<Mount>,
    linux: Linux,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    terminal: bool,
    user: User,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    capabilities: Capabilities,
    rlimits: Vec<Rlimit>,
    no_new_privileges: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct User {
    uid: u32,
    gid: u32,
    additional_gids: Vec<u32>,
}

/// Every set empty: a container holds no capability, whatever its user.
#[derive(Debug, Default, Serialize)]
struct Capabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    inheritable: Vec<String>,
    permitted: Vec<String>,
    ambient: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Rlimit {
    #[serde(rename = "type")]
    kind: &'static str,
    hard: u64,
    soft: u64,
}

#[derive(Debug, Serialize)]
struct Root {
    path: String,
    readonly: bool,
}

/// One mount of the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Mount {
    destination: String,
    #[serde(rename = "type")]
    kind: String,
    source: String,
    options: Vec<String>,
}

impl Mount {
    /// A read-only bind of the host's `source` at `destination`.
    pub(crate) fn bind_ro(source: &Path, destination: &str) -> Self {
        Self::bind(source, destination, true)
    }

    /// A bind of `source`; never a way to run set-uid programs or open devices.
    pub(crate) fn bind(source: &Path, destination: &str, read_only: bool) -> Self {
        let mode = if read_only { "ro" } else { "rw" };
        Self {
            destination: destination.to_owned(),
            kind: "bind".into(),
            source: source.display().to_string(),
            options: ["rbind", mode, "nosuid", "nodev"].map(String::from).to_vec(),
        }
    }

    /// A private tmpfs of at most `bytes`, writable by every user (like `/tmp`) unless
    /// `read_only`.
    pub(crate) fn tmpfs(destination: &str, bytes: u64, read_only: bool) -> Self {
        let mode = if read_only { "ro" } else { "rw" };
        Self {
            destination: destination.to_owned(),
            kind: "tmpfs".into(),
            source: "tmpfs".into(),
            options: [mode, "nosuid", "nodev", "mode=1777"]
                .map(String::from)
                .into_iter()
                .chain([format!("size={bytes}")])
                .collect(),
        }
    }

    fn special(destination: &str, kind: &str, options: &[&str]) -> Self {
        Self {
            destination: destination.to_owned(),
            kind: kind.to_owned(),
            source: kind.to_owned(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Linux {
    namespaces: Vec<Namespace>,
    cgroups_path: String,
    resources: Resources,
    seccomp: Seccomp,
    masked_paths: Vec<&'static str>,
    readonly_paths: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Debug, Serialize)]
struct Resources {
    devices: Vec<DeviceRule>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<Cpu>,
    pids: Pids,
}

#[derive(Debug, Serialize)]
struct DeviceRule {
    allow: bool,
    access: &'static str,
}

#[derive(Debug, Serialize)]
struct Memory {
    limit: u64,
    /// Memory plus swap: equal to `limit`, so a container never swaps past its limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    swap: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Cpu {
    quota: u64,
    period: u64,
}

#[derive(Debug, Serialize)]
struct Pids {
    limit: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Seccomp {
    default_action: &'static str,
    architectures: Vec<&'static str>,
    syscalls: Vec<SyscallRule>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SyscallRule {
    names: Vec<&'static str>,
    action: &'static str,
    errno_ret: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<SyscallArg>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SyscallArg {
    index: u32,
    value: u64,
    value_two: u64,
    op: &'static str,
}

/// What one container's configuration is made of.
#[derive(Debug)]
pub(crate) struct Container<'a> {
    /// The program and its arguments, as seen inside the container.
    pub(crate) args: Vec<String>,
    /// The whole environment.
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) security: &'a Security,
    pub(crate) limits: Limits,
    /// `pids.max` of the container's cgroup.
    pub(crate) pids_limit: i64,
    /// Whether the host accounts swap (v1 `memory.memsw.*`), so memory plus swap can be capped.
    pub(crate) swap_accounting: bool,
    /// The open-file limit; at most the agent's own hard limit (the agent may lack
    /// `CAP_SYS_RESOURCE`, so it can lower limits, never raise them).
    pub(crate) open_files: u64,
    /// Every mount beyond `/proc`, `/dev` and `/sys`, in order.
    pub(crate) mounts: Vec<Mount>,
    /// The cgroup path, relative to the hierarchy's root.
    pub(crate) cgroups_path: String,
    pub(crate) hostname: String,
}

/// The configuration of `container`, with the root file system at `rootfs` (read-only: only
/// mounts are writable). The network namespace is the host's: see the crate README.
pub(crate) fn config(container: &Container<'_>, rootfs: &Path) -> Config {
    let mut mounts = vec![
        Mount::special("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        Mount::special("/dev", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        Mount::special(
            "/dev/pts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        ),
        Mount::special(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        Mount::special("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        Mount::special("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ];
    mounts.extend(container.mounts.iter().cloned());
    let limits = container.limits;
    let security = container.security;
    Config {
        oci_version: OCI_VERSION,
        process: Process {
            terminal: false,
            user: User {
                uid: security.uid,
                gid: security.gid,
                additional_gids: security.groups.clone(),
            },
            args: container.args.clone(),
            env: container.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: "/".into(),
            capabilities: Capabilities::default(),
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE",
                hard: container.open_files,
                soft: container.open_files,
            }],
            no_new_privileges: security.no_new_privileges,
        },
        root: Root { path: rootfs.display().to_string(), readonly: true },
        hostname: container.hostname.clone(),
        mounts,
        linux: Linux {
            // Not `network`: see the crate README. Not `user`: the ids are the host's.
            namespaces: ["pid", "ipc", "uts", "mount"].map(|kind| Namespace { kind }).into(),
            cgroups_path: container.cgroups_path.clone(),
            resources: Resources {
                devices: vec![DeviceRule { allow: false, access: "rwm" }],
                memory: limits.memory_bytes.map(|limit| Memory {
                    limit,
                    swap: container.swap_accounting.then_some(limit),
                }),
                cpu: limits.cpu_millis.map(|millis| Cpu {
                    // The kernel refuses quotas under 1 ms per period.
                    quota: (millis * CPU_PERIOD_US / 1000).max(1000),
                    period: CPU_PERIOD_US,
                }),
                pids: Pids { limit: container.pids_limit },
            },
            seccomp: runtime_default_seccomp(),
            masked_paths: MASKED_PATHS.to_vec(),
            readonly_paths: READONLY_PATHS.to_vec(),
        },
    }
}

/// Kernel files that say too much about the host, hidden as a container runtime hides them.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Kernel files a container may read, never write.
const READONLY_PATHS: &[&str] =
    &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// System calls no function needs and that widen what a process can reach: mounting, new
/// namespaces, kernel modules and keyrings, tracing other processes, BPF, io_uring (which
/// bypasses seccomp for what it does), clock and swap changes, reboot. They fail with `EPERM`;
/// everything else is allowed. This is the spirit of containerd's `RuntimeDefault`, as a deny
/// list.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// `clone` flags that make namespaces; `clone` with any of them is denied like `unshare`.
const NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn runtime_default_seccomp() -> Seccomp {
    let deny = |names: Vec<&'static str>, errno_ret: u32, args: Vec<SyscallArg>| SyscallRule {
        names,
        action: "SCMP_ACT_ERRNO",
        errno_ret,
        args,
    };
    let mut syscalls = vec![deny(DENIED_SYSCALLS.to_vec(), EPERM, Vec::new())];
    // clone3 passes its flags in memory, where a filter cannot look: ENOSYS makes the C
    // libraries fall back to clone, whose flags are checked below.
    syscalls.push(deny(vec!["clone3"], ENOSYS, Vec::new()));
    for &flag in NAMESPACE_FLAGS {
        let arg = SyscallArg { index: 0, value: flag, value_two: flag, op: "SCMP_CMP_MASKED_EQ" };
        syscalls.push(deny(vec!["clone"], EPERM, vec![arg]));
    }
    Seccomp { default_action: "SCMP_ACT_ALLOW", architectures: architectures(), syscalls }
}

/// The seccomp architectures of this machine's processes (native and compat).
fn architectures() -> Vec<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => vec!["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn config_json(security: &Security, limits: Limits) -> Value {
        let env = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let container = Container {
            args: vec!["/kubefaas/kubefaas-watchdog".into()],
            env: &env,
            security,
            limits,
            pids_limit: 512,
            swap_accounting: true,
            open_files: 20_000,
            mounts: vec![
                Mount::bind_ro(Path::new("/usr"), "/usr"),
                Mount::tmpfs("/tmp", 1 << 20, false),
            ],
            cgroups_path: "/kubefaas-node-1/c".into(),
            hostname: "p".into(),
        };
        serde_json::to_value(config(&container, Path::new("/pods/p/rootfs"))).unwrap()
    }

    fn restricted() -> Security {
        Security { uid: 65532, gid: 65532, groups: vec![65533], no_new_privileges: true }
    }

    #[test]
    fn a_container_runs_as_its_user_without_capabilities_on_a_read_only_root() {
        let config = config_json(&restricted(), Limits::default());
        let process = &config["process"];
        assert_eq!(process["user"], json!({"uid": 65532, "gid": 65532, "additionalGids": [65533]}));
        assert_eq!(process["noNewPrivileges"], true);
        for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
            assert_eq!(process["capabilities"][set], json!([]), "{set}");
        }
        assert_eq!(process["env"], json!(["A=1"]));
        assert_eq!(config["root"], json!({"path": "/pods/p/rootfs", "readonly": true}));
        let namespaces: Vec<&str> = config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(namespaces, ["pid", "ipc", "uts", "mount"]);
        assert!(config.to_string().find("oomScoreAdj").is_none(), "the agent cannot raise it");
    }

    #[test]
    fn limits_become_cgroup_resources_and_binds_cannot_run_set_uid_programs() {
        let limits = Limits { memory_bytes: Some(64 << 20), cpu_millis: Some(250) };
        let config = config_json(&restricted(), limits);
        let resources = &config["linux"]["resources"];
        assert_eq!(resources["memory"], json!({"limit": 64 << 20, "swap": 64 << 20}));
        assert_eq!(resources["cpu"], json!({"quota": 25_000, "period": 100_000}));
        assert_eq!(resources["pids"]["limit"], 512);
        assert_eq!(resources["devices"], json!([{"allow": false, "access": "rwm"}]));
        let mounts = config["mounts"].as_array().unwrap();
        let usr = mounts.iter().find(|m| m["destination"] == "/usr").unwrap();
        assert_eq!(usr["options"], json!(["rbind", "ro", "nosuid", "nodev"]));
        let tmp = mounts.iter().find(|m| m["destination"] == "/tmp").unwrap();
        assert!(tmp["options"].as_array().unwrap().contains(&json!("size=1048576")));
        assert!(
            config_json(&restricted(), Limits::default())["linux"]["resources"]
                .get("memory")
                .is_none()
        );
    }

    #[test]
    fn the_seccomp_profile_denies_mounts_namespaces_and_tracing() {
        let config = config_json(&restricted(), Limits::default());
        let seccomp = &config["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
        let denied: Vec<&str> = seccomp["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["args"].is_null())
            .flat_map(|r| r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()))
            .collect();
        for name in ["mount", "unshare", "setns", "ptrace", "bpf", "keyctl", "clone3"] {
            assert!(denied.contains(&name), "{name} must be denied");
        }
        let clone_rules = seccomp["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"] == json!(["clone"]));
        assert_eq!(clone_rules.count(), NAMESPACE_FLAGS.len());
    }
}
