//! A real Kafka-protocol server for tests: tansu on a free loopback port, stopped when dropped.
//! Shared by the log scenarios and the end-to-end tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(20);

pub struct Tansu {
    child: Child,
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let bin = binary();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
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
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(POLL);
        }
        Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
