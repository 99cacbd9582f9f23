//! A SecantusDB server owned by a test: started on a free port, stoppable and
//! restartable on the same storage, killed when dropped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, repo_root};

pub struct MongoServer {
    port: u16,
    storage: String,
    child: Option<Child>,
}

impl MongoServer {
    pub fn start_in_memory() -> Self {
        Self::start(":memory:".to_owned())
    }

    /// A server whose data survives [`MongoServer::stop`] and [`MongoServer::restart`].
    pub fn start_on_disk() -> Self {
        let dir = repo_root()
            .join("target/test-mongo")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).expect("create storage dir");
        Self::start(dir.to_string_lossy().into_owned())
    }

    fn start(storage: String) -> Self {
        let mut server = Self {
            port: free_port(),
            storage,
            child: None,
        };
        server.restart();
        server
    }

    pub fn base_uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}", self.port)
    }

    /// Stops the server the way an operator would (SIGTERM), killing it
    /// only if it does not exit within 10 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        let binary = std::env::var("SECANTUSD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join(".mongo/venv/bin/secantusd-py"));
        assert!(
            binary.exists(),
            "{} not found: run scripts/test.sh (it installs SecantusDB) or set TEST_MONGO_URI",
            binary.display()
        );
        let child = Command::new(&binary)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--storage-path", &self.storage, "--log-level", "WARNING"])
            // Journaled writes must reach the disk before they are acknowledged
            // (a store in memory has no disk).
            .args((self.storage != ":memory:").then_some("--sync-on-commit"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn secantusd-py");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "SecantusDB did not open port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
    }
}
