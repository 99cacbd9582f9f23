//! What can go wrong while starting or stopping a process.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("cannot find the running executable: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("{} not built", .0.display())]
    NotBuilt(PathBuf),
    #[error("{} not found: {hint}", path.display())]
    ServerMissing { path: PathBuf, hint: &'static str },
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {what} ({}): {source}", binary.display())]
    Spawn {
        what: String,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited during start-up ({status}); log: {log}")]
    ExitedDuringStartup {
        what: String,
        status: ExitStatus,
        log: String,
    },
    #[error("{what} did not say which port it listens on within {after:?}; log: {log}")]
    NoPorts {
        what: String,
        after: Duration,
        log: String,
    },
    #[error("{what} not healthy after {after:?}; log: {log}")]
    NotHealthy {
        what: String,
        after: Duration,
        log: String,
    },
    #[error("SecantusDB did not open port {port} within {after:?}; log: {log}")]
    PortClosed {
        port: u16,
        after: Duration,
        log: String,
    },
    #[error("cannot signal {what} (pid {pid}): {detail}")]
    Signal {
        what: String,
        pid: u32,
        detail: String,
    },
    #[error("{what} did not exit within {after:?} of SIGTERM; log: {log}")]
    StopTimeout {
        what: String,
        after: Duration,
        log: String,
    },
    #[error("waiting for {what}: {source}")]
    Wait {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not running")]
    NotRunning(String),
}
