//! One cgroup per container, the way a kubelet gives each container its own. `runc` makes it
//! and writes the limits (memory with no swap on top, CPU quota, pids) from the bundle's
//! `cgroupsPath`; the agent picks that path below its own group, reads the kernel's OOM-kill
//! counter from it (how it tells an `OOMKilled` container from one that crashed) and kills
//! what is left in it.
//!
//! cgroup v1 and v2 are both handled. On v1 the kernel kills one process of the group when it
//! is over its limit; the agent then kills the rest, which is what `memory.oom.group = 1` does
//! on v2 and what a kubelet on v2 configures. Where no cgroup is writable no container runs
//! (see the crate README).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where container cgroups are created on this host.
#[derive(Clone, Debug)]
pub(crate) enum Hierarchy {
    /// cgroup v1: the memory hierarchy's mount point, every controller's mount point, and the
    /// agent's group as a path from the hierarchies' root (`runc` makes it in each).
    V1 { memory: PathBuf, mounts: Vec<PathBuf>, group: String },
    /// cgroup v2: the mount point and the agent's group below it, delegating memory, cpu and
    /// pids to its children.
    V2 { mount: PathBuf, group: String },
}

impl Hierarchy {
    /// The hierarchy below this process's own cgroups, in a `kubefaas-node-<pid>` group, or
    /// `None` when the host has no writable memory cgroup.
    pub(crate) fn detect() -> Option<Self> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        let group = format!(
            "kubefaas-node-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        // (mount point, mounted root, controllers or "" for v2)
        let mounts: Vec<(PathBuf, String, String)> = mountinfo
            .lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let left: Vec<&str> = left.split(' ').collect();
                let right: Vec<&str> = right.split(' ').collect();
                let controllers = match *right.first()? {
                    "cgroup2" => String::new(),
                    "cgroup" => right.get(2)?.to_string(),
                    _ => return None,
                };
                Some((PathBuf::from(left.get(4)?), left.get(3)?.to_string(), controllers))
            })
            .collect();
        let own_path = |controller: &str| -> Option<String> {
            own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                let matches = if controller.is_empty() {
                    list.is_empty()
                } else {
                    list.split(',').any(|c| c == controller)
                };
                matches.then(|| path.to_owned())
            })
        };
        // (mount point, the agent's group as a path from the hierarchy's root)
        let dir_for = |controller: &str| -> Option<(PathBuf, String)> {
            let (point, root, _) = mounts.iter().find(|(_, _, c)| {
                if controller.is_empty() {
                    c.is_empty()
                } else {
                    c.split(',').any(|x| x == controller)
                }
            })?;
            let own = own_path(controller).unwrap_or_else(|| "/".into());
            let rel = own.strip_prefix(root.as_str()).unwrap_or(&own).trim_start_matches('/');
            sweep_dead_agents(&point.join(rel));
            fs::create_dir_all(point.join(rel).join(&group)).ok()?;
            let path = if rel.is_empty() { format!("/{group}") } else { format!("/{rel}/{group}") };
            Some((point.clone(), path))
        };
        if let Some((memory, group)) = dir_for("memory") {
            let mounts = mounts.iter().filter(|(_, _, c)| !c.is_empty()).map(|m| m.0.clone());
            return Some(Self::V1 { memory, mounts: mounts.collect(), group });
        }
        let (mount, group) = dir_for("")?;
        let parent = mount.join(group.trim_start_matches('/'));
        let delegated = parent
            .parent()
            .map(|p| fs::write(p.join("cgroup.subtree_control"), "+memory +cpu +pids"))
            .and_then(Result::ok)
            .and(fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids").ok());
        if delegated.is_none() {
            let _ = fs::remove_dir(&parent);
            return None;
        }
        Some(Self::V2 { mount, group })
    }

    /// The `cgroupsPath` of the container cgroup `name`, for the bundle.
    pub(crate) fn cgroups_path(&self, name: &str) -> String {
        match self {
            Self::V1 { group, .. } | Self::V2 { group, .. } => format!("{group}/{name}"),
        }
    }

    /// The container cgroup `name` (`runc` makes it when the container starts).
    pub(crate) fn container(&self, name: &str) -> Cgroup {
        let path = self.cgroups_path(name);
        match self {
            Self::V1 { memory, .. } => Cgroup { memory: under(memory, &path), v2: false },
            Self::V2 { mount, .. } => Cgroup { memory: under(mount, &path), v2: true },
        }
    }

    /// Whether memory plus swap can be limited (v1 `memory.memsw.*`; v2 has `memory.swap.max`,
    /// which `runc` writes from the same field).
    pub(crate) fn swap_accounting(&self) -> bool {
        match self {
            Self::V1 { memory, group, .. } => {
                under(memory, group).join("memory.memsw.limit_in_bytes").exists()
            }
            Self::V2 { .. } => true,
        }
    }

    /// Removes the agent's group (each container's cgroup is removed with it).
    pub(crate) fn remove(&self) {
        match self {
            Self::V1 { mounts, group, .. } => {
                for mount in mounts {
                    let _ = fs::remove_dir(under(mount, group));
                }
            }
            Self::V2 { mount, group } => {
                let _ = fs::remove_dir(under(mount, group));
            }
        }
    }
}

/// `path` (from the hierarchy's root) below the mount point `mount`.
fn under(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// Kills what agents that died (SIGKILL leaves no chance to clean up) left in their groups
/// `kubefaas-node-<pid>-…` below `parent`, and removes the groups, so an orphaned watchdog
/// never holds a pod address a new agent hands out.
fn sweep_dead_agents(parent: &std::path::Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kubefaas-node-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let group = entry.path();
        for container in fs::read_dir(&group).into_iter().flatten().flatten() {
            if container.path().is_dir() {
                let stale = Cgroup { memory: container.path(), v2: false };
                stale.remove(Duration::from_millis(500));
            }
        }
        let _ = fs::remove_dir(&group);
    }
}

/// The cgroup of one container run. Dropping it kills what is left in it and removes it.
#[derive(Debug)]
pub(crate) struct Cgroup {
    /// The memory cgroup (on v2 the only directory).
    memory: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// How many processes the kernel's OOM killer has killed in this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        let file = if self.v2 { "memory.events" } else { "memory.oom_control" };
        let text = fs::read_to_string(self.memory.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill ").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// SIGKILLs every process in the cgroup.
    pub(crate) fn kill_all(&self) {
        if self.v2 && fs::write(self.memory.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        let procs = fs::read_to_string(self.memory.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            super::process::kill(pid);
        }
    }

    fn remove(&self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            self.kill_all();
            let removed = fs::remove_dir(&self.memory);
            if removed.is_ok() || removed.is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
                return;
            }
            if Instant::now() >= until {
                tracing::warn!(cgroup = %self.memory.display(), "container cgroup could not be removed");
                return;
            }
            // Killed processes leave the cgroup asynchronously; poll with a bound.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove(Duration::from_secs(2));
    }
}
