//! Harness for end-to-end tests: the real `ferry` binary on ephemeral ports, driven over HTTP
//! and through its CLI, as a user would.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// How often a wait re-checks its condition.
const POLL: Duration = Duration::from_millis(20);

/// A running `ferry serve`.
pub struct Server {
    pub child: Child,
    pub ingress: String,
    pub api: String,
    /// The serving gateway's base URL (`http://127.0.0.1:PORT`).
    pub gateway: String,
    /// The ops listener's base URL, with `--ops-listen`.
    pub ops: Option<String>,
}

impl Server {
    /// Starts `ferry serve` on `data_dir` with ports chosen by the OS, and waits until it
    /// prints both addresses.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`start`](Self::start) with `env` added to the server's environment.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Server {
        Self::start_under(&[], data_dir, extra, env)
    }

    /// [`start_with_env`](Self::start_with_env) with the binary run by `wrapper` (a command
    /// and its arguments, to which the binary and its arguments are appended; it must `exec`
    /// them, so that the child is the server).
    pub fn start_under(
        wrapper: &[&str],
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            // Loopback on port 0, unless `extra` says where.
            .args(
                ["--ingress-listen", "--api-listen", "--gateway-listen"]
                    .into_iter()
                    .filter(|flag| !extra.contains(flag))
                    .flat_map(|flag| [flag, "127.0.0.1:0"]),
            )
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start ferry serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // The ops line, if any, comes before the gateway's.
        let (mut ingress, mut api, mut gateway, mut ops) = (None, None, None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ingress.is_none() || api.is_none() || gateway.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                let log =
                    std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
                panic!("ferry serve did not start in time; its log:\n{log}")
            });
            if let Some(a) = line.strip_prefix("ingress listening on ") {
                ingress = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("api listening on ") {
                api = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("gateway listening on ") {
                gateway = Some(a.to_string());
            }
            if let Some(a) = line.strip_prefix("ops listening on ") {
                ops = Some(a.to_string());
            }
        }
        Server {
            child,
            ingress: ingress.unwrap(),
            api: api.unwrap(),
            gateway: gateway.unwrap(),
            ops,
        }
    }

    /// Runs a CLI verb against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_stdin(&self.api, args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        cli_with_stdin(&self.api, args, Some(stdin))
    }

    /// The broker's events, oldest first, as JSON values (`ferry tail --no-follow -o json`).
    pub fn events(&self, namespace: &str, broker: &str) -> Vec<serde_json::Value> {
        let out = self.cli(&[
            "tail",
            broker,
            "-n",
            namespace,
            "--from-beginning",
            "--no-follow",
            "-o",
            "json",
        ]);
        assert!(
            out.status.success(),
            "tail failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("tail prints one JSON event per line"))
            .collect()
    }

    /// POSTs a minimal binary-mode event `id` to `namespace/broker`; returns the status.
    pub async fn post_event(&self, namespace: &str, broker: &str, id: &str) -> u16 {
        let url = format!("{}/{namespace}/{broker}", self.ingress);
        let resp = binary_post(&reqwest::Client::new(), &url, id, &[], b"{}")
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_exit(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(POLL);
    }
}

pub fn cli_with_stdin(api: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("FERRY_SERVER", api)
        // A developer's own CLI configuration (a token) stays out of the tests.
        .env("FERRY_CLI_CONFIG", "/nonexistent/ferry-cli.yaml")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `ferry ARGS -o json`, parsed.
pub fn get_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = server.cli(&all);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A resource's condition of type `ty`, if it has one.
pub fn condition<'a>(r: &'a serde_json::Value, ty: &str) -> Option<&'a serde_json::Value> {
    r["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// Polls `f` until it returns `Some`, or panics after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A binary-mode POST with the four required attributes plus `extra` headers.
pub fn binary_post(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    extra: &[(&str, &str)],
    body: &'static [u8],
) -> reqwest::RequestBuilder {
    let mut req = client
        .post(url)
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/e2e")
        .header("ce-type", "e2e.test")
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    req
}

/// `ferry serve` flags for Kafka mode on the test server at `bootstrap`: one record per producer
/// batch, since tansu 0.6 reports a wrong log end after a multi-record batch.
pub fn kafka_flags(bootstrap: &str) -> Vec<&str> {
    vec!["--kafka", bootstrap, "--kafka-max-batch-records", "1"]
}
