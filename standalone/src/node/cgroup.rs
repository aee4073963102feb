//! One cgroup per container, the way a kubelet gives each container its own: the memory limit
//! (no swap on top), the CPU quota, and the kernel's OOM-kill counter, which is how the agent
//! tells an `OOMKilled` container from one that crashed.
//!
//! cgroup v1 (a `memory` and a `cpu` hierarchy) and v2 are both handled. On v1 the kernel kills
//! one process of the group when it is over its limit; the agent then kills the rest, which is
//! what `memory.oom.group = 1` does on v2 and what a kubelet on v2 configures. Where no cgroup
//! is writable the agent runs containers without one (see the crate README).

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Limits of one container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Memory limit in bytes, if any.
    pub(crate) memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a core, if any.
    pub(crate) cpu_millis: Option<u64>,
}

/// Where container cgroups are created on this host.
#[derive(Clone, Debug)]
pub(crate) enum Hierarchy {
    /// cgroup v1: the parent directory in the memory hierarchy and, if writable, in the cpu one.
    V1 { memory: PathBuf, cpu: Option<PathBuf> },
    /// cgroup v2: the parent directory, delegating memory and cpu to its children.
    V2 { parent: PathBuf },
}

/// The CFS period used for CPU quotas.
const CPU_PERIOD_US: u64 = 100_000;

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
        let dir_for = |controller: &str| -> Option<PathBuf> {
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
            let dir = point.join(rel).join(&group);
            fs::create_dir_all(&dir).ok()?;
            Some(dir)
        };
        if let Some(memory) = dir_for("memory") {
            return Some(Self::V1 { memory, cpu: dir_for("cpu") });
        }
        let parent = dir_for("")?;
        let delegated = parent
            .parent()
            .map(|p| fs::write(p.join("cgroup.subtree_control"), "+memory +cpu"))
            .and_then(Result::ok)
            .and(fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu").ok());
        if delegated.is_none() {
            let _ = fs::remove_dir(&parent);
            return None;
        }
        Some(Self::V2 { parent })
    }

    /// Creates the cgroup `name` with `limits`.
    pub(crate) fn create(&self, name: &str, limits: Limits) -> io::Result<Cgroup> {
        let cgroup = match self {
            Self::V1 { memory, cpu } => Cgroup {
                memory: memory.join(name),
                cpu: cpu.as_ref().map(|c| c.join(name)),
                v2: false,
            },
            Self::V2 { parent } => Cgroup { memory: parent.join(name), cpu: None, v2: true },
        };
        for dir in cgroup.dirs() {
            fs::create_dir_all(dir)?;
        }
        // From here on dropping `cgroup` removes what was made.
        cgroup.apply(limits)?;
        Ok(cgroup)
    }

    /// Removes the agent's parent groups (each container's cgroup is removed with it).
    pub(crate) fn remove(&self) {
        match self {
            Self::V1 { memory, cpu } => {
                let _ = fs::remove_dir(memory);
                if let Some(cpu) = cpu {
                    let _ = fs::remove_dir(cpu);
                }
            }
            Self::V2 { parent } => {
                let _ = fs::remove_dir(parent);
            }
        }
    }
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
                let stale = Cgroup { memory: container.path(), cpu: None, v2: false };
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
    /// The v1 cpu cgroup, if there is one.
    cpu: Option<PathBuf>,
    v2: bool,
}

impl Cgroup {
    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.memory).chain(self.cpu.as_ref())
    }

    fn apply(&self, limits: Limits) -> io::Result<()> {
        if let Some(bytes) = limits.memory_bytes {
            let bytes = bytes.to_string();
            if self.v2 {
                fs::write(self.memory.join("memory.max"), &bytes)?;
                let _ = fs::write(self.memory.join("memory.swap.max"), "0");
                let _ = fs::write(self.memory.join("memory.oom.group"), "1");
            } else {
                fs::write(self.memory.join("memory.limit_in_bytes"), &bytes)?;
                let memsw = self.memory.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    fs::write(memsw, &bytes)?;
                }
            }
        }
        if let Some(millis) = limits.cpu_millis {
            // The kernel refuses quotas under 1 ms per period.
            let quota = (millis * CPU_PERIOD_US / 1000).max(1000);
            if self.v2 {
                fs::write(self.memory.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
            } else if let Some(cpu) = &self.cpu {
                fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                fs::write(cpu.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes its pid into to join.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs().map(|d| d.join("cgroup.procs")).collect()
    }

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
            super::process::kill(pid, super::process::Signal::Kill);
        }
    }

    fn remove(&self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            self.kill_all();
            let left = self
                .dirs()
                .filter(|d| fs::remove_dir(d).is_err_and(|e| e.kind() != io::ErrorKind::NotFound))
                .count();
            if left == 0 {
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

/// A path that `/bin/sh` can be given to join the cgroup before `exec`ing the container's
/// program, so every process of the container is charged from its first byte.
pub(crate) fn join_script() -> &'static str {
    // $1: colon-separated cgroup.procs files; the rest is the command. Exit 125 tells the agent
    // that joining failed, not the program.
    "procs=$1; shift\nIFS=:\nfor f in $procs; do echo $$ > \"$f\" || exit 125; done\nunset IFS\nexec \"$@\""
}
