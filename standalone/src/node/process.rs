//! SIGKILL for what is left of a container: the processes of its cgroup, and the process group
//! of the `runc` that ran it.

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// Kills one process; one that is already gone is not an error.
pub(crate) fn kill(pid: i32) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// Kills a process group (each container's `runc` leads its own).
pub(crate) fn kill_group(pgid: i32) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = kill_process_group(pid, Signal::KILL);
    }
}
