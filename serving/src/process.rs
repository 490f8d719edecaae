//! Instances as OS processes: started from one thread that lives as long as Ferry (so that
//! `setpriv --pdeathsig KILL` ties each child's life to Ferry's), their output kept per
//! instance, their readiness probed, stopped with SIGTERM then SIGKILL, and each one's pid
//! recorded under the data dir so that a restart after a crash reclaims what was left.

use crate::spec::{Probe, RevisionSpec};
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncRead;
use tokio::process::Child;
use tokio::sync::broadcast;

/// Lines of output kept per instance.
const LOG_LINES: usize = 1000;
/// Longest line kept (longer ones are cut).
const LOG_LINE_MAX: usize = 16 * 1024;

/// Starts instances (through [`control::process::Spawner`]: `setpriv --pdeathsig`, pids
/// recorded and reclaimed) and gives them ports.
pub struct Spawner {
    procs: control::process::Spawner,
    /// Ports given to instances that exist.
    ports: Arc<Mutex<HashSet<u16>>>,
}

impl Spawner {
    /// A spawner for the current tokio runtime; pids recorded in `pid_dir`, and whatever an
    /// earlier run left there killed first.
    pub fn new(pid_dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            procs: control::process::Spawner::new(pid_dir, "revision")?,
            ports: Arc::default(),
        })
    }

    /// Starts `spec`'s container with `env` (PORT and K_* included), output piped.
    pub async fn spawn(
        &self,
        spec: &RevisionSpec,
        env: &[(String, String)],
    ) -> std::io::Result<Child> {
        let c = spec
            .containers
            .first()
            .ok_or_else(|| std::io::Error::other("no container"))?;
        let (program, rest) = c
            .command
            .split_first()
            .ok_or_else(|| std::io::Error::other("no command"))?;
        let mut cmd = self.procs.command(program);
        cmd.args(rest)
            .args(&c.args)
            .envs(c.env.iter().map(|e| (e.name.as_str(), e.value.as_str())))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so that stopping it stops what it started (`sh -c`).
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &c.working_dir {
            cmd.current_dir(dir);
        }
        self.procs.spawn(cmd).await
    }

    /// Forgets an instance that has exited.
    pub fn exited(&self, pid: u32) {
        self.procs.exited(pid);
    }
}

/// One instance's output: the last lines, and a feed of new ones for `ferry logs -f`.
pub struct Output {
    lines: Mutex<VecDeque<Line>>,
    feed: broadcast::Sender<String>,
    prefix: String,
}

#[derive(Clone)]
struct Line {
    stderr: bool,
    text: String,
}

impl Output {
    pub fn new(prefix: String, feed: broadcast::Sender<String>) -> Arc<Self> {
        Arc::new(Self {
            lines: Mutex::new(VecDeque::new()),
            feed,
            prefix,
        })
    }

    fn push(&self, stderr: bool, text: String) {
        let shown = format!("[{}] {text}", self.prefix);
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(Line { stderr, text });
        drop(lines);
        let _ = self.feed.send(shown);
    }

    /// Every kept line, prefixed by the instance.
    pub fn shown(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .map(|l| format!("[{}] {}", self.prefix, l.text))
            .collect()
    }

    /// The last `n` lines of stderr, joined.
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let tail: Vec<&str> = lines
            .iter()
            .filter(|l| l.stderr)
            .rev()
            .take(n)
            .map(|l| l.text.as_str())
            .collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Reads `from` line by line into the kept output until it ends (lines cut at
    /// `LOG_LINE_MAX`).
    pub async fn collect(self: Arc<Self>, from: impl AsyncRead + Unpin, stderr: bool) {
        control::process::for_each_line(from, LOG_LINE_MAX, |l| self.push(stderr, l)).await;
    }
}

/// How an instance's readiness is checked.
#[derive(Clone, Debug)]
pub enum Readiness {
    /// A TCP connect to the port (Knative's default).
    Tcp,
    /// An HTTP GET of the path: ready on 2xx or 3xx.
    Http(String),
}

impl Readiness {
    pub fn of(probe: Option<&Probe>) -> Self {
        match probe.and_then(|p| p.http_get.as_ref()) {
            Some(h) => Readiness::Http(h.path.clone().unwrap_or_else(|| "/".into())),
            None => Readiness::Tcp,
        }
    }

    /// One probe of the instance on `port`, bounded by `limit`.
    pub async fn check(&self, port: u16, limit: Duration) -> bool {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let Readiness::Http(path) = self else {
                return Some(true);
            };
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: Knative-Kube-Probe\r\nK-Network-Probe: queue\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.ok()?;
            // "HTTP/1.1 200"
            let code = std::str::from_utf8(&head[9..12])
                .ok()?
                .parse::<u16>()
                .ok()?;
            Some((200..400).contains(&code))
        };
        matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(true)))
    }
}

/// Instances' ports are drawn from below Linux's ephemeral range (32768 and up), so that no
/// outgoing connection takes an instance's port between the pick and the bind, and a probe of a
/// port nobody listens on yet can never connect to itself.
const INSTANCE_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A port given to one instance; no other instance gets it until this is dropped.
pub struct PortLease {
    port: u16,
    taken: Arc<Mutex<HashSet<u16>>>,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.port);
    }
}

impl Spawner {
    /// A free port on loopback for a new instance: not another instance's (which may not
    /// have bound it yet), and free now.
    pub fn reserve_port(&self) -> std::io::Result<PortLease> {
        let mut taken = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..64 {
            let port = rand::random_range(INSTANCE_PORTS);
            if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                taken.insert(port);
                return Ok(PortLease {
                    port,
                    taken: self.ports.clone(),
                });
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no free port in {INSTANCE_PORTS:?} after 64 tries"),
        ))
    }
}
