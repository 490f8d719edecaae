//! What every kind that runs local processes needs (Serving's instances, Pipelines' steps):
//! a [`Spawner`] that ties each child's life to Ferry's and reclaims what a crash left,
//! signals to a process group, and output read line by line with a bound.

use rustix::process::{Pid, Signal};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

type SpawnRequest = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Starts processes from one long-lived thread. `PR_SET_PDEATHSIG` fires when the *thread*
/// that forked the child ends; tokio's worker threads may come and go, this one does not.
/// Each child is started through `setpriv --pdeathsig KILL` (util-linux) where the system has
/// it, so it dies with Ferry; its pid is recorded in `pid_dir` while it runs, and the next
/// start kills (with their process groups) the recorded ones that still run.
pub struct Spawner {
    tx: std::sync::mpsc::Sender<SpawnRequest>,
    setpriv: Option<PathBuf>,
    pid_dir: PathBuf,
    /// What the processes are, for logs (`revision`, `pipeline step`).
    what: &'static str,
}

impl Spawner {
    /// A spawner for the current tokio runtime; pids recorded in `pid_dir`, and whatever an
    /// earlier run left there killed first.
    pub fn new(pid_dir: &Path, what: &'static str) -> std::io::Result<Self> {
        std::fs::create_dir_all(pid_dir)?;
        reclaim(pid_dir, what);
        let handle = tokio::runtime::Handle::current();
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ferry-spawner".into())
            .spawn(move || {
                let _runtime = handle.enter();
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(spawn_retrying(|| cmd.spawn()));
                }
            })?;
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        if setpriv.is_none() {
            tracing::warn!("setpriv (util-linux) not found: {what} processes may outlive a killed Ferry until its next start reclaims them");
        }
        Ok(Self {
            tx,
            setpriv,
            pid_dir: pid_dir.to_path_buf(),
            what,
        })
    }

    /// A command that runs `program` (through `setpriv` when there is one): add its
    /// arguments and settings, then [`spawn`](Self::spawn) it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = match &self.setpriv {
            Some(setpriv) => {
                let mut cmd = Command::new(setpriv);
                cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        without_secrets(&mut cmd);
        cmd
    }

    /// Starts `cmd` from the spawner's thread and records its pid.
    pub async fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((cmd, reply))
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
        let child = rx
            .await
            .map_err(|_| std::io::Error::other("the spawner thread is gone"))??;
        if let Some(pid) = child.id() {
            if let Some(start) = start_time(pid) {
                let _ = std::fs::write(self.pid_dir.join(pid.to_string()), start);
            }
        }
        Ok(child)
    }

    /// Forgets a process that has exited.
    pub fn exited(&self, pid: u32) {
        let _ = std::fs::remove_file(self.pid_dir.join(pid.to_string()));
    }

    pub fn what(&self) -> &'static str {
        self.what
    }
}

/// How many times a spawn is tried while the program file is busy.
const BUSY_TRIES: u32 = 20;

/// Spawns, trying again (briefly) while exec says the program file is busy (`ETXTBSY`): a
/// script just written can be held open for an instant by a child another thread is forking
/// (pipelines write and run step scripts concurrently).
pub fn spawn_retrying<T>(mut spawn: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut tries = 0;
    loop {
        match spawn() {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::TXTBSY.raw_os_error())
                    && tries < BUSY_TRIES =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(2 * u64::from(tries)));
            }
            other => return other,
        }
    }
}

/// The process's start time (field 22 of `/proc/PID/stat`): with the pid, it names one process
/// for good (pids are reused).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19).map(str::to_string)
}

/// Kills the processes an earlier run recorded that are still the same processes.
fn reclaim(pid_dir: &Path, what: &str) {
    let Ok(entries) = std::fs::read_dir(pid_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let pid = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok());
        let recorded = std::fs::read_to_string(&path).ok();
        if let (Some(pid), Some(recorded)) = (pid, recorded) {
            if start_time(pid).as_deref() == Some(recorded.trim()) {
                tracing::warn!(
                    pid,
                    "killing a {what} process (and its group) left by an earlier run"
                );
                signal_group(pid, Signal::KILL);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Sends `sig` to the process group `pid` leads (each instance or step leads its own, so what
/// it started goes too). Nothing to do when the group is gone.
pub fn signal_group(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Reads `from` to its end, calling `line` with each line: any bytes (shown lossily), without
/// its line ending, cut at `max` bytes (the rest skipped, never held in memory).
pub async fn for_each_line(from: impl AsyncRead + Unpin, max: usize, mut line: impl FnMut(String)) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (used, end) = match chunk.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (chunk.len(), false),
        };
        let room = max.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..used.min(room)]);
        reader.consume(used);
        if end {
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            line(String::from_utf8_lossy(&buf).into_owned());
            buf.clear();
        }
    }
    if !buf.is_empty() {
        line(String::from_utf8_lossy(&buf).into_owned());
    }
}

/// Removes Ferry's secrets from what a child process inherits (a step or an app that prints
/// its environment would otherwise show them in `ferry logs`): the Kafka SASL password, the
/// CLI's token, and the secrets resources reference (`FERRY_SECRET_*`).
pub fn without_secrets(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let secret = name.to_str().is_some_and(|n| {
            n.starts_with("FERRY_SECRET_") || n == "FERRY_KAFKA_SASL_PASSWORD" || n == "FERRY_TOKEN"
        });
        if secret {
            cmd.env_remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_cut_and_read_lossily_to_the_end() {
        let input: &[u8] = b"short\r\n0123456789abcdef\n\xff\xfeok\nlast";
        let mut got = Vec::new();
        for_each_line(input, 8, |l| got.push(l)).await;
        assert_eq!(got, ["short", "01234567", "\u{fffd}\u{fffd}ok", "last"]);
    }
}
