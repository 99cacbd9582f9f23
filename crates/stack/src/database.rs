//! A SecantusDB server (MongoDB wire protocol): started on a free port as
//! `scripts/start-mongo.sh` starts it, stoppable (SIGTERM, then SIGKILL) and
//! restartable on the same storage, stopped when dropped.

use std::fs::File;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::StackError;
use crate::listener;
use crate::{free_port, workspace_root};

/// How long a restart waits for its port to be free again.
const PORT_RETAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The compiled server's `--cache-size` unless `MONGO_CACHE_SIZE` says
/// otherwise: the one place it is written (scripts/start-mongo.sh and the
/// bench read it from here). A ceiling, not an allocation: with 512M the
/// soak's working set (events, outcomes, their indexes) outgrew the cache
/// within minutes and processing fell from about 540 to 390 events/s as pages
/// were evicted and read again (BENCHMARKS.md). mongo:7 sizes its cache at
/// half the memory less 1 GB.
pub const DEFAULT_CACHE_SIZE: &str = "2G";

/// Which of SecantusDB's servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    /// `secantusd-rs` (crates.io `secantus-mdb`, in `.tools/secantus-rs`):
    /// what `make run` and `make bench` use.
    Compiled,
    /// `secantusd-py` (PyPI, in `.mongo/venv`): the test suite's server.
    Python,
}

impl DatabaseKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Compiled => "compiled",
            Self::Python => "python",
        }
    }

    /// Where the project's install scripts put this server; for the compiled
    /// one, `PATH` when the project has not installed it.
    pub fn default_binary(self) -> PathBuf {
        let root = workspace_root();
        match self {
            Self::Compiled => {
                let local = root.join(".tools/secantus-rs/bin/secantusd-rs");
                if local.exists() {
                    return local;
                }
                std::env::var_os("PATH")
                    .into_iter()
                    .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                    .map(|dir| dir.join("secantusd-rs"))
                    .find(|candidate| candidate.exists())
                    .unwrap_or(local)
            }
            Self::Python => root.join(".mongo/venv/bin/secantusd-py"),
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Self::Compiled => "run scripts/install-secantus-rs.sh (make bench and make run do)",
            Self::Python => {
                "run scripts/test.sh (it installs SecantusDB) or scripts/install-mongo.sh, or set TEST_MONGO_URI"
            }
        }
    }
}

/// Where the server keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Storage {
    /// `:memory:` (the Python server only): nothing to sync, nothing kept.
    Memory,
    /// A directory, created if missing; writes acknowledged as journaled are
    /// on disk (`--sync-on-commit`), as on MongoDB.
    Dir(PathBuf),
}

impl Storage {
    /// A directory not created yet, or empty: a store the server will create.
    ///
    /// Only a new store gets `--data-nonlogged` (mongod's split in a replica
    /// set: only the oplog is journaled, and a start after a crash replays it
    /// from the last checkpoint; each write is logged once, not once per
    /// table and index). The server records the mode in the store at its
    /// first start and keeps it after that. But a store created with full
    /// journaling has no such record, and given the flag it would switch
    /// modes over tables created the other way: unsafe after a crash.
    fn is_new(&self) -> bool {
        match self {
            Self::Memory => false,
            Self::Dir(dir) => {
                std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
            }
        }
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct DatabaseSpec {
    pub kind: DatabaseKind,
    pub binary: PathBuf,
    pub storage: Storage,
    /// `--cache-size` of the compiled server ([`DEFAULT_CACHE_SIZE`]).
    pub cache_size: String,
    /// The server's output; none: discarded.
    pub log: Option<PathBuf>,
    /// In a process group of its own (as start-mongo.sh's `setsid`): a
    /// Ctrl-C in the terminal then reaches the services, and whoever started
    /// the server stops it after them.
    pub own_process_group: bool,
    pub start_timeout: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Appended to the command line (a test's `--checkpoint-seconds`).
    pub extra_args: Vec<String>,
}

impl DatabaseSpec {
    /// The project's install of `kind`, on `storage`, with start-mongo.sh's settings.
    pub fn new(kind: DatabaseKind, storage: Storage) -> Self {
        Self {
            kind,
            binary: kind.default_binary(),
            storage,
            cache_size: DEFAULT_CACHE_SIZE.to_owned(),
            log: None,
            own_process_group: false,
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
            extra_args: Vec::new(),
        }
    }

    /// The server's command line, as scripts/start-mongo.sh builds it.
    fn args(&self, port: u16) -> Vec<String> {
        let storage = match &self.storage {
            Storage::Memory => ":memory:".to_owned(),
            Storage::Dir(dir) => dir.to_string_lossy().into_owned(),
        };
        let mut args: Vec<String> = ["--host", "127.0.0.1", "--port", &port.to_string()]
            .into_iter()
            .chain(["--storage-path", &storage, "--log-level", "WARNING"])
            .map(str::to_owned)
            .collect();
        if self.kind == DatabaseKind::Compiled {
            args.extend(["--cache-size".to_owned(), self.cache_size.clone()]);
            args.extend(["--log-file-max", "32MB"].map(str::to_owned));
        }
        // Journaled writes must reach the disk before they are acknowledged
        // (a store in memory has no disk).
        if matches!(self.storage, Storage::Dir(_)) {
            args.push("--sync-on-commit".to_owned());
            if self.kind == DatabaseKind::Compiled && self.storage.is_new() {
                args.push("--data-nonlogged".to_owned());
            }
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running SecantusDB server.
pub struct MongoServer {
    spec: DatabaseSpec,
    port: u16,
    child: Option<Child>,
    /// Whether it has run before (a restart appends to its log).
    started: bool,
    /// Where the current run's lines start in its log.
    log_offset: usize,
}

impl MongoServer {
    /// The test suite's server (`SECANTUSD_BIN`, default
    /// `.mongo/venv/bin/secantusd-py`) with its data in memory.
    pub fn start_in_memory() -> Self {
        Self::start_for_tests(Storage::Memory)
    }

    /// A server whose data survives [`MongoServer::stop`] and [`MongoServer::restart`].
    pub fn start_on_disk() -> Self {
        Self::start_for_tests(Self::test_storage())
    }

    /// The compiled server (the one `make run` uses) with its data on disk,
    /// as start-mongo.sh runs it, plus `extra_args`.
    pub fn start_compiled_on_disk(extra_args: &[&str]) -> Self {
        let mut spec = DatabaseSpec::new(DatabaseKind::Compiled, Self::test_storage());
        spec.cache_size = "256M".to_owned();
        spec.extra_args = extra_args.iter().map(|arg| (*arg).to_owned()).collect();
        Self::start_with_log(spec)
    }

    fn test_storage() -> Storage {
        Storage::Dir(
            workspace_root()
                .join("target/test-mongo")
                .join(uuid::Uuid::new_v4().simple().to_string()),
        )
    }

    fn start_for_tests(storage: Storage) -> Self {
        let mut spec = DatabaseSpec::new(DatabaseKind::Python, storage);
        if let Ok(binary) = std::env::var("SECANTUSD_BIN") {
            spec.binary = PathBuf::from(binary);
        }
        Self::start_with_log(spec)
    }

    fn start_with_log(mut spec: DatabaseSpec) -> Self {
        // A log, so that a restart can tell a taken port from a failure.
        let logs = workspace_root().join("target/test-logs");
        std::fs::create_dir_all(&logs)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", logs.display()));
        let name = format!("secantusd-{}.log", uuid::Uuid::new_v4().simple());
        spec.log = Some(logs.join(name));
        Self::launch(spec).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `spec` on a free port and waits until the port opens.
    pub fn launch(spec: DatabaseSpec) -> Result<Self, StackError> {
        if !spec.binary.exists() {
            return Err(StackError::ServerMissing {
                path: spec.binary.clone(),
                hint: spec.kind.install_hint(),
            });
        }
        if let Storage::Dir(dir) = &spec.storage {
            std::fs::create_dir_all(dir).map_err(|source| StackError::File {
                action: "create",
                path: dir.clone(),
                source,
            })?;
        }
        let mut server = Self {
            spec,
            port: free_port(),
            child: None,
            started: false,
            log_offset: 0,
        };
        server.try_restart()?;
        Ok(server)
    }

    pub fn base_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn kind(&self) -> DatabaseKind {
        self.spec.kind
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn storage(&self) -> &Storage {
        &self.spec.storage
    }

    pub fn log_path(&self) -> Option<&PathBuf> {
        self.spec.log.as_ref()
    }

    /// Stops the server the way an operator would (SIGTERM), killing it
    /// only if it does not exit within its stop timeout (10 s unless set).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = crate::signal::send("SecantusDB", child.id(), "TERM");
        let deadline = Instant::now() + self.spec.stop_timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills the server (SIGKILL): a crash, nothing flushed that was not
    /// flushed already. [`MongoServer::restart`] starts it again on its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`MongoServer::restart`], with an error instead of a panic. The port
    /// is reused, and while the server is down anything on the machine may
    /// take it (another test's connection or listener): a run that could not
    /// bind is started again, for a while.
    pub fn try_restart(&mut self) -> Result<(), StackError> {
        self.stop();
        let deadline = Instant::now() + PORT_RETAKE_TIMEOUT;
        loop {
            match self.run_once() {
                Err(StackError::ExitedDuringStartup { .. })
                    if Instant::now() < deadline && self.run_could_not_bind() =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                result => return result,
            }
        }
    }

    /// What the current run has written to its log (empty without a log).
    pub fn run_log(&self) -> String {
        let Some(path) = &self.spec.log else {
            return String::new();
        };
        let log = std::fs::read(path).unwrap_or_default();
        String::from_utf8_lossy(log.get(self.log_offset..).unwrap_or_default()).into_owned()
    }

    /// Whether this run's log says its port was taken (both servers print
    /// the system's words for it).
    fn run_could_not_bind(&self) -> bool {
        self.run_log().contains("Address already in use")
    }

    /// Starts one run on the storage and waits for its port.
    fn run_once(&mut self) -> Result<(), StackError> {
        let (stdout, stderr) = match &self.spec.log {
            Some(path) => {
                let file_error = |source| StackError::File {
                    action: "open",
                    path: path.clone(),
                    source,
                };
                // A fresh log per launch; a restart appends to it.
                let log = File::options()
                    .create(true)
                    .write(true)
                    .append(self.started)
                    .truncate(!self.started)
                    .open(path)
                    .map_err(file_error)?;
                let copy = log.try_clone().map_err(file_error)?;
                // Where this run's lines start, for a start-up error's tail.
                self.log_offset = log.metadata().map_or(0, |m| m.len() as usize);
                (Stdio::from(log), Stdio::from(copy))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let mut command = Command::new(&self.spec.binary);
        command
            .args(self.spec.args(self.port))
            // Each makes the server acknowledge writes whose oplog entry is
            // not yet durable, which the replay after a crash depends on.
            .env_remove("SECANTUS_OPLOG_ASYNC")
            .env_remove("SECANTUS_OPLOG_NONLOGGED")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if self.spec.own_process_group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let child = command.spawn().map_err(|source| StackError::Spawn {
            what: format!("secantusd ({})", self.spec.kind.name()),
            binary: self.spec.binary.clone(),
            source,
        })?;
        self.child = Some(child);
        self.started = true;
        self.wait_for_port()
    }

    /// Whether this run listens on its port: a connection alone could reach
    /// whatever took the port while the server was down.
    fn listening(&self) -> bool {
        let pid = self.child.as_ref().map(Child::id);
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && pid.is_some_and(|pid| listener::listens_on(pid, self.port).unwrap_or(true))
    }

    fn wait_for_port(&mut self) -> Result<(), StackError> {
        let log = || {
            self.spec
                .log
                .as_ref()
                .map_or("(discarded)".to_owned(), |p| {
                    crate::log_tail::describe(p, self.log_offset)
                })
        };
        let deadline = Instant::now() + self.spec.start_timeout;
        while !self.listening() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(StackError::ExitedDuringStartup {
                    what: format!("secantusd ({})", self.spec.kind.name()),
                    status,
                    log: log(),
                });
            }
            if Instant::now() >= deadline {
                return Err(StackError::PortClosed {
                    port: self.port,
                    after: self.spec.start_timeout,
                    log: log(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_server_arguments_match_start_mongo_sh() {
        let dir = std::env::temp_dir().join(uuid::Uuid::new_v4().simple().to_string());
        let mut spec = DatabaseSpec::new(DatabaseKind::Compiled, Storage::Dir(dir.clone()));
        spec.cache_size = "256M".to_owned();
        let base = format!(
            "--host 127.0.0.1 --port 27017 --storage-path {} --log-level WARNING \
             --cache-size 256M --log-file-max 32MB --sync-on-commit",
            dir.display()
        );
        // A new store journals only its oplog; an existing one is left in
        // the mode it was created with.
        assert_eq!(
            spec.args(27017).join(" "),
            format!("{base} --data-nonlogged")
        );
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(
            spec.args(27017).join(" "),
            format!("{base} --data-nonlogged")
        );
        std::fs::write(dir.join("WiredTiger"), b"").unwrap();
        assert_eq!(spec.args(27017).join(" "), base);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn start_mongo_sh_reads_the_default_cache_size_from_here() {
        // The script and the bench parse the constant's line; a reworded
        // line would leave them without a default.
        let source = include_str!("database.rs");
        let line = format!("pub const DEFAULT_CACHE_SIZE: &str = \"{DEFAULT_CACHE_SIZE}\";");
        assert!(source.lines().any(|l| l == line), "{line}");
        let script =
            std::fs::read_to_string(workspace_root().join("scripts/start-mongo.sh")).unwrap();
        assert!(
            script.contains("DEFAULT_CACHE_SIZE"),
            "start-mongo.sh must read the constant"
        );
    }

    #[test]
    fn python_server_in_memory_does_not_sync() {
        let spec = DatabaseSpec::new(DatabaseKind::Python, Storage::Memory);
        assert_eq!(
            spec.args(1).join(" "),
            "--host 127.0.0.1 --port 1 --storage-path :memory: --log-level WARNING"
        );
    }
}
