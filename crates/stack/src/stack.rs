//! A whole system on this machine: a database (started here on a fresh
//! store, or one already running), N processors and M ingest instances, as
//! `make run` starts them; stopped in `scripts/run.sh`'s order.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::database::{MongoServer, Storage};
use crate::error::StackError;
use crate::service::{Service, ServiceSpec};
use crate::{DatabaseSpec, free_port};

/// Where the services' database is.
#[derive(Clone, Debug)]
pub enum Mongo {
    /// Start this server (and stop it last).
    Start(DatabaseSpec),
    /// A server someone else runs: `mongodb://host:port`, without a database.
    Existing(String),
}

/// What to start.
#[derive(Clone, Debug)]
pub struct StackSpec {
    pub mongo: Mongo,
    /// The database the services use (`MONGO_URI` names it).
    pub db_name: String,
    pub processors: usize,
    pub ingest: usize,
    /// Environment of every service, on top of `MONGO_URI` and `LOG_FORMAT=json`.
    pub env: Vec<(String, String)>,
    pub processor_env: Vec<(String, String)>,
    /// Ingest's `PROCESSOR_URL` defaults to the first processor (with no
    /// processor, to a port where nothing listens: nudges are best-effort).
    pub ingest_env: Vec<(String, String)>,
    /// Where the `ingest` and `processor` binaries are.
    pub bin_dir: PathBuf,
    /// Logs: `<log_dir>/<name>-processor-<i>.log`, `<name>-ingest.log`
    /// (`<name>-ingest-<i>.log` for more than one), `<name>-db.log`.
    pub log_dir: PathBuf,
    pub name: String,
    /// How long each service may drain after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// Delete the started server's storage directory once it has stopped
    /// (a fresh store made for this stack).
    pub remove_storage: bool,
}

/// The running system.
pub struct Stack {
    // Fields drop in order: on an error, the services go before the database.
    processors: Vec<Service>,
    ingest: Vec<Service>,
    database: Option<MongoServer>,
    mongo_base: String,
    db_name: String,
    stop_timeout: Duration,
    remove_storage: bool,
}

/// How one process of the stack ended.
#[derive(Debug)]
pub struct Stopped {
    /// `processor-<i>`, `ingest-<i>`, `database`.
    pub what: String,
    pub result: Result<Option<ExitStatus>, StackError>,
}

impl Stack {
    /// Starts the database (if asked), then the processors one after
    /// another, then ingest; each healthy before the next. On an error,
    /// whatever had started is killed (the values' `Drop`).
    pub async fn start(spec: StackSpec) -> Result<Self, StackError> {
        std::fs::create_dir_all(&spec.log_dir).map_err(|source| StackError::File {
            action: "create",
            path: spec.log_dir.clone(),
            source,
        })?;
        let (database, mongo_base) = match spec.mongo {
            Mongo::Existing(base) => (None, base.trim_end_matches('/').to_owned()),
            Mongo::Start(mut db) => {
                db.log = Some(spec.log_dir.join(format!("{}-db.log", spec.name)));
                // Waiting for the port blocks: keep it off the runtime's threads.
                let server = tokio::task::spawn_blocking(move || MongoServer::launch(db))
                    .await
                    .expect("the database start-up task does not panic")?;
                let base = server.base_uri();
                (Some(server), base)
            }
        };
        let mut base_env = vec![
            (
                "MONGO_URI".to_owned(),
                format!("{mongo_base}/{}", spec.db_name),
            ),
            ("LOG_FORMAT".to_owned(), "json".to_owned()),
        ];
        base_env.extend(spec.env.iter().cloned());
        let service = |name: &str, log: String, extra: Vec<(String, String)>| ServiceSpec {
            name: name.to_owned(),
            binary: spec.bin_dir.join(name),
            env: base_env.iter().cloned().chain(extra).collect(),
            log: spec.log_dir.join(log),
        };

        let mut stack = Self {
            processors: Vec::new(),
            ingest: Vec::new(),
            database,
            mongo_base,
            db_name: spec.db_name.clone(),
            stop_timeout: spec.stop_timeout,
            remove_storage: spec.remove_storage,
        };
        for i in 0..spec.processors {
            let log = format!("{}-processor-{i}.log", spec.name);
            let processor = service("processor", log, spec.processor_env.clone());
            stack.processors.push(Service::launch(processor).await?);
        }
        let processor_url = stack
            .processors
            .first()
            .map_or_else(|| format!("http://127.0.0.1:{}", free_port()), Service::url);
        for i in 0..spec.ingest {
            let log = if spec.ingest == 1 {
                format!("{}-ingest.log", spec.name)
            } else {
                format!("{}-ingest-{i}.log", spec.name)
            };
            let env = std::iter::once(("PROCESSOR_URL".to_owned(), processor_url.clone()))
                .chain(spec.ingest_env.iter().cloned())
                .collect();
            stack
                .ingest
                .push(Service::launch(service("ingest", log, env)).await?);
        }
        Ok(stack)
    }

    pub fn database(&self) -> Option<&MongoServer> {
        self.database.as_ref()
    }

    /// `mongodb://host:port`, without a database.
    pub fn mongo_base(&self) -> &str {
        &self.mongo_base
    }

    pub fn mongo_uri(&self) -> String {
        format!("{}/{}", self.mongo_base, self.db_name)
    }

    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    pub fn processors(&self) -> &[Service] {
        &self.processors
    }

    pub fn ingest(&self) -> &[Service] {
        &self.ingest
    }

    /// SIGTERM to every service at once (ingest first, so it stops taking
    /// events), each given `stop_timeout` to drain before SIGKILL; then the
    /// database, as `scripts/run.sh` stops `make run`. A service that had
    /// already exited (killed from outside) just has its status collected.
    pub async fn stop(mut self) -> Vec<Stopped> {
        let mut stopping = JoinSet::new();
        let services = self
            .ingest
            .drain(..)
            .enumerate()
            .map(|(i, s)| (format!("ingest-{i}"), s));
        let processors = self
            .processors
            .drain(..)
            .enumerate()
            .map(|(i, s)| (format!("processor-{i}"), s));
        let timeout = self.stop_timeout;
        for (order, (what, mut service)) in services.chain(processors).enumerate() {
            stopping.spawn(async move {
                let result = service.try_terminate(timeout).await.map(Some);
                (order, Stopped { what, result })
            });
        }
        let mut stopped: Vec<(usize, Stopped)> = stopping.join_all().await;
        stopped.sort_by_key(|(order, _)| *order);
        let mut report: Vec<Stopped> = stopped.into_iter().map(|(_, s)| s).collect();

        if let Some(mut database) = self.database.take() {
            let remove = self.remove_storage;
            let result = tokio::task::spawn_blocking(move || {
                database.stop();
                match database.storage() {
                    Storage::Dir(dir) if remove => {
                        std::fs::remove_dir_all(dir).map_err(|source| StackError::File {
                            action: "remove",
                            path: dir.clone(),
                            source,
                        })
                    }
                    _ => Ok(()),
                }
            })
            .await
            .expect("the database stop task does not panic");
            report.push(Stopped {
                what: "database".to_owned(),
                result: result.map(|()| None),
            });
        }
        report
    }
}
