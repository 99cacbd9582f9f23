//! A spawned `ingest` or `processor` binary: started with a clean
//! environment, its ports learned from its JSON log, `/health` awaited;
//! SIGKILL, SIGTERM with a deadline, restart on the same ports.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::StackError;
use crate::log_tail;
use crate::{binary_path, workspace_root};

/// How long a service may take to log its ports, and then to answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a restart waits for its ports to be free again.
const PORT_RETAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// What to start: a binary, its environment, where it logs.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// `ingest` or `processor`: the service logs `"<name> listening"`.
    pub name: String,
    pub binary: PathBuf,
    /// On top of `PATH` alone; `PORT`/`METRICS_PORT` here pin the ports,
    /// otherwise the service picks free ones.
    pub env: Vec<(String, String)>,
    /// Appended to (a restart adds its lines after the previous run's).
    pub log: PathBuf,
}

/// A spawned `ingest` or `processor` binary (killed when dropped).
pub struct Service {
    name: String,
    scheme: &'static str,
    binary: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    metrics_port: u16,
    log: PathBuf,
    /// Where this run's lines start in the (appended) log.
    log_offset: usize,
    child: Option<Child>,
}

impl Service {
    /// Starts `name` (`ingest` or `processor`) with `env` plus PORT, waiting
    /// for `/health`; the binary is the test executable's sibling, the log
    /// goes to `target/test-logs/`. Panics on failure (the tests' helper).
    pub async fn start(name: &str, env: &[(&str, String)]) -> Self {
        let logs = workspace_root().join("target/test-logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let spec = ServiceSpec {
            name: name.to_owned(),
            binary: binary_path(name),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
            log: logs.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple())),
        };
        Self::launch(spec).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `spec` and waits until it is healthy.
    pub async fn launch(spec: ServiceSpec) -> Result<Self, StackError> {
        let tls = spec.env.iter().any(|(k, _)| k == "TLS_CERT_PATH");
        let mut service = Self {
            scheme: if tls { "https" } else { "http" },
            binary: spec.binary,
            env: spec.env,
            // Ports are chosen by the service (0) and read from its log: a
            // port picked here could be taken by anything before it binds.
            port: 0,
            metrics_port: 0,
            name: spec.name,
            log_offset: 0,
            log: spec.log,
            child: None,
        };
        service.spawn()?;
        service.learn_ports().await?;
        service.wait_healthy().await?;
        Ok(service)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Where this service serves `/metrics` (its separate listener).
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// The process id (for SIGSTOP/SIGCONT and /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &PathBuf {
        &self.log
    }

    fn spawn(&mut self) -> Result<(), StackError> {
        self.log_offset = self.read_log().len();
        let file_error = |source| StackError::File {
            action: "open",
            path: self.log.clone(),
            source,
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(file_error)?;
        let stderr = log.try_clone().map_err(file_error)?;
        let child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PORT", self.port.to_string())
            .env("METRICS_PORT", self.metrics_port.to_string())
            // Unless the caller pins them, the service picks free ports.
            .envs(
                self.env
                    .iter()
                    .filter(|(k, _)| k == "PORT" || k == "METRICS_PORT")
                    .map(|(k, v)| (k, v)),
            )
            // The "listening" lines the ports are read from are info lines.
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|source| StackError::Spawn {
                what: self.name.clone(),
                binary: self.binary.clone(),
                source,
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// The ports this run of the service bound, from its log.
    async fn learn_ports(&mut self) -> Result<(), StackError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = self.read_log();
            let run = log.get(self.log_offset..).unwrap_or("");
            let service = port_of(run, &format!("\"{} listening", self.name));
            let metrics = port_of(run, "\"metrics listening");
            if let (Some(service), Some(metrics)) = (service, metrics) {
                self.port = service;
                self.metrics_port = metrics;
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                return Err(StackError::NoPorts {
                    what: self.name.clone(),
                    after: START_TIMEOUT,
                    log: log_tail::describe(&self.log, self.log_offset),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_healthy(&mut self) -> Result<(), StackError> {
        // Liveness only: certificate checks belong to the tests that make them.
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .expect("an HTTP client with default settings");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(response) = client.get(format!("{}/health", self.url())).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            self.check_running()?;
            if Instant::now() >= deadline {
                return Err(StackError::NotHealthy {
                    what: self.name.clone(),
                    after: START_TIMEOUT,
                    log: log_tail::describe(&self.log, self.log_offset),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An error if the process has already exited.
    fn check_running(&mut self) -> Result<(), StackError> {
        match self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            Some(status) => Err(StackError::ExitedDuringStartup {
                what: self.name.clone(),
                status,
                log: log_tail::describe(&self.log, self.log_offset),
            }),
            None => Ok(()),
        }
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (panics after `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.try_terminate(timeout)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGTERM, then waits up to `timeout` for the exit; past it, SIGKILL
    /// and an error. A process that already exited (killed from outside,
    /// say) just has its status collected.
    pub async fn try_terminate(&mut self, timeout: Duration) -> Result<ExitStatus, StackError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| StackError::NotRunning(self.name.clone()))?;
        if let Some(status) = child.try_wait().ok().flatten() {
            return Ok(status);
        }
        crate::signal::send(&self.name, child.id(), "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(source) => {
                    return Err(StackError::Wait {
                        what: self.name.clone(),
                        source,
                    });
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(StackError::StopTimeout {
                    what: self.name.clone(),
                    after: timeout,
                    log: log_tail::describe(&self.log, self.log_offset),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the same binary again, same ports and settings.
    pub async fn restart(&mut self) {
        self.try_restart().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Service::restart`], with an error instead of a panic. The ports
    /// were free while the service held them, but once it is down anything
    /// on the machine may take one (another test's connection or listener):
    /// a run that could not bind is started again, for a while. A port held
    /// for longer than that still fails the restart, with the log's word.
    pub async fn try_restart(&mut self) -> Result<(), StackError> {
        self.kill9();
        let deadline = Instant::now() + PORT_RETAKE_TIMEOUT;
        loop {
            self.spawn()?;
            match self.learn_ports().await {
                Err(StackError::ExitedDuringStartup { .. })
                    if Instant::now() < deadline && self.run_could_not_bind() =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                result => {
                    result?;
                    return self.wait_healthy().await;
                }
            }
        }
    }

    /// Whether this run's log says a port was taken (`StartupError::Bind`).
    fn run_could_not_bind(&self) -> bool {
        let log = self.read_log();
        log.get(self.log_offset..)
            .is_some_and(|run| run.contains("cannot listen on port"))
    }

    pub fn read_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The port of the last `<what>...","port":N` line of a JSON log.
fn port_of(log: &str, what: &str) -> Option<u16> {
    log.lines()
        .filter(|line| line.contains(what))
        .filter_map(|line| {
            let rest = line.split("\"port\":").nth(1)?;
            rest.split([',', '}']).next()?.trim().parse().ok()
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::port_of;

    #[test]
    fn reads_the_last_listening_port() {
        let log = concat!(
            r#"{"level":"INFO","fields":{"message":"ingest listening","port":4001}}"#,
            "\n",
            r#"{"level":"INFO","fields":{"message":"metrics listening","port":4002}}"#,
            "\n",
            r#"{"level":"INFO","fields":{"message":"ingest listening","port":4003}}"#,
        );
        assert_eq!(port_of(log, "\"ingest listening"), Some(4003));
        assert_eq!(port_of(log, "\"metrics listening"), Some(4002));
        assert_eq!(port_of(log, "\"processor listening"), None);
    }
}
