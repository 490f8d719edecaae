//! A real Kafka-protocol server for tests: tansu on a free loopback port, stopped when dropped.
//! Shared by the log scenarios and the end-to-end tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(20);

pub struct Tansu {
    /// The server process (tests freeze it with SIGSTOP).
    pub child: Child,
    /// `host:port` for clients.
    pub bootstrap: String,
}

/// The tansu binary: `FERRY_TANSU`, else the one `scripts/setup --tests` installs, else `tansu`
/// on PATH.
fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("FERRY_TANSU") {
        return p.into();
    }
    let installed = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/ferry/tools/bin/tansu");
    if installed.exists() {
        installed
    } else {
        "tansu".into()
    }
}

impl Tansu {
    pub fn start() -> Self {
        Self::start_at("127.0.0.1", "127.0.0.1")
    }

    /// Listening on `listen` (an IPv4 address, e.g. `0.0.0.0`), telling clients to connect to
    /// `advertised`, on a free port.
    pub fn start_at(listen: &str, advertised: &str) -> Self {
        let port = std::net::TcpListener::bind((listen, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = binary();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{listen}:{port}"),
                "--advertised-listener-url",
                &format!("tcp://{advertised}:{port}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu at {}: {e} (scripts/setup --tests installs it)",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((advertised, port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(POLL);
        }
        Self {
            child,
            bootstrap: format!("{advertised}:{port}"),
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
