//! `loadgen stack`: the benchmarks' (and anyone's) one way to start a stack
//! of real processes. Starts it (the `stack` crate, as the black-box tests
//! do), prints one JSON line saying where everything is, holds it until
//! stdin closes or SIGTERM/SIGINT arrives, then stops it in
//! `scripts/run.sh`'s order. The caller may signal the pids it was given
//! (SIGKILL a processor, say); the stop then just collects their status.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use stack::{DatabaseKind, DatabaseSpec, Mongo, Service, Stack, StackSpec, Storage};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::{DatabaseArg, StackArgs};

pub async fn main(args: StackArgs) -> Result<(), String> {
    let spec = spec(args)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;

    // A signal during start-up drops the half-started stack: its services
    // are killed, its database stopped (their `Drop`).
    let stack = tokio::select! {
        started = Stack::start(spec) => started.map_err(|e| format!("stack: {e}"))?,
        _ = terminate.recv() => return Err("stopped by SIGTERM while starting".to_owned()),
        _ = interrupt.recv() => return Err("stopped by SIGINT while starting".to_owned()),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", describe(&stack)).map_err(|e| format!("stdout: {e}"))?;
    stdout.flush().map_err(|e| format!("stdout: {e}"))?;
    drop(stdout);

    tokio::select! {
        _ = stdin_closed() => {}
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }

    let mut failed = false;
    for stopped in stack.stop().await {
        match stopped.result {
            Ok(Some(status)) => eprintln!("loadgen stack: {} {status}", stopped.what),
            Ok(None) => eprintln!("loadgen stack: {} stopped", stopped.what),
            Err(e) => {
                failed = true;
                eprintln!("loadgen stack: {}: {e}", stopped.what);
            }
        }
    }
    if failed {
        Err("the stack did not stop cleanly".to_owned())
    } else {
        Ok(())
    }
}

fn spec(args: StackArgs) -> Result<StackSpec, String> {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let db_name = args
        .db_name
        .unwrap_or_else(|| format!("stack_{unix}_{}", std::process::id()));
    let name = args.name.unwrap_or_else(|| db_name.clone());
    // Absolute, so the paths in the JSON line mean the same to any reader.
    let log_dir = std::path::absolute(&args.log_dir)
        .map_err(|e| format!("--log-dir {}: {e}", args.log_dir.display()))?;
    let bin_dir = match args.bin_dir {
        Some(dir) => dir,
        None => stack::find_binary("loadgen")
            .map_err(|e| e.to_string())?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let mut remove_storage = false;
    let mongo = match (args.database, args.mongo_base) {
        (Some(kind), _) => {
            let kind = match kind {
                DatabaseArg::Compiled => DatabaseKind::Compiled,
                DatabaseArg::Python => DatabaseKind::Python,
            };
            let storage = match args.storage.as_deref() {
                Some(":memory:") => Storage::Memory,
                Some(dir) => Storage::Dir(dir.into()),
                None => {
                    // A fresh store, deleted when the stack stops.
                    remove_storage = true;
                    let unique = uuid::Uuid::new_v4().simple().to_string();
                    Storage::Dir(log_dir.join(format!("db-{name}-{}", &unique[..8])))
                }
            };
            let mut db = DatabaseSpec::new(kind, storage);
            if let Some(binary) = args.server_bin {
                db.binary = binary;
            }
            db.cache_size = args.cache_size;
            db.own_process_group = true;
            db.start_timeout = Duration::from_secs(60);
            db.stop_timeout = Duration::from_secs(args.stop_timeout);
            Mongo::Start(db)
        }
        (None, Some(base)) => Mongo::Existing(base),
        (None, None) => return Err("--database or --mongo-base is required".to_owned()),
    };
    Ok(StackSpec {
        mongo,
        db_name,
        processors: args.processors,
        ingest: args.ingest,
        env: args.env,
        processor_env: args.processor_env,
        ingest_env: args.ingest_env,
        bin_dir,
        log_dir,
        name,
        stop_timeout: Duration::from_secs(args.stop_timeout),
        remove_storage,
    })
}

/// The line the caller reads: every process with its pid, ports and log.
fn describe(stack: &Stack) -> Value {
    let service = |s: &Service| {
        json!({
            "pid": s.pid(),
            "port": s.port(),
            "url": s.url(),
            "metrics_port": s.metrics_port(),
            "metrics_url": s.metrics_url(),
            "log": s.log_path(),
        })
    };
    let database = stack.database().map(|db| {
        json!({
            "kind": db.kind().name(),
            "pid": db.pid(),
            "port": db.port(),
            "log": db.log_path(),
            "storage": match db.storage() {
                Storage::Memory => json!(":memory:"),
                Storage::Dir(dir) => json!(dir),
            },
        })
    });
    json!({
        "kind": "stack",
        "pid": std::process::id(),
        "db_name": stack.db_name(),
        "mongo_base": stack.mongo_base(),
        "mongo_uri": stack.mongo_uri(),
        "database": database,
        "processors": stack.processors().iter().map(service).collect::<Vec<_>>(),
        "ingest": stack.ingest().iter().map(service).collect::<Vec<_>>(),
        "ingest_url": stack.ingest().first().map(Service::url),
    })
}

/// Resolves when stdin reaches its end (the caller closed it or died).
/// A plain thread reads it: tokio's stdin read cannot be cancelled and would
/// hold the runtime's shutdown.
async fn stdin_closed() {
    let (closed, wait) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = [0_u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    let _ = wait.await;
}
