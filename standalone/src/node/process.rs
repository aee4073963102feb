//! Signals to container processes.

use rustix::process::{Pid, kill_process, kill_process_group};

/// The signals the agent sends.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Signal {
    /// Asks the program to stop (the watchdog finishes its invocation and stops).
    Term,
    /// Kills it.
    Kill,
}

impl Signal {
    fn raw(self) -> rustix::process::Signal {
        match self {
            Self::Term => rustix::process::Signal::TERM,
            Self::Kill => rustix::process::Signal::KILL,
        }
    }
}

/// Signals one process; one that is already gone is not an error.
pub(crate) fn kill(pid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, signal.raw());
    }
}

/// Signals a process group (each container's program leads its own).
pub(crate) fn kill_group(pgid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = kill_process_group(pid, signal.raw());
    }
}
