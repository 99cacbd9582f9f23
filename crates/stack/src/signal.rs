//! Signals to a child by pid, through `kill(1)`: the workspace forbids
//! `unsafe`, and std's `Child::kill` only sends SIGKILL.

use std::process::Command;

use crate::error::StackError;

/// Sends `SIG<name>` (`TERM`, `KILL`, ...) to `pid`, which belongs to `what`.
pub fn send(what: &str, pid: u32, name: &str) -> Result<(), StackError> {
    let error = |detail: String| StackError::Signal {
        what: what.to_owned(),
        pid,
        detail,
    };
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .map_err(|e| error(format!("cannot run kill: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(error(format!("kill -{name} exited with {status}")))
    }
}
