//! Pipelines as a user meets them: Tekton v1 YAML applied with `ferry apply`, run as local
//! processes by the real binary, every transition an event in `ferry-system/pipelines`.
//!
//! - `conformance.rs`: the upstream Tekton examples, unchanged, through the binary.
//! - `runs.rs`: what a run does and says: failures, finally, events, the CLI, validation,
//!   cancel, timeouts, retries, missing results, generateName, logs.
//! - `limits.rs`: concurrency limits, kill -9 of Ferry mid-run, Kafka mode.

mod conformance;
mod limits;
mod runs;

use super::support::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Long enough for the whole upstream corpus on a busy 2-core machine.
pub(super) const CORPUS_WAIT: Duration = Duration::from_secs(240);
pub(super) const WAIT: Duration = Duration::from_secs(60);

pub(super) fn corpus(part: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/conformance/tekton")
        .join(part)
}

/// A server whose shebang-less scripts run with bash, with `sh` on the steps' PATH being bash
/// too (the corpus README's advice: its scripts were written for busybox or bash).
pub(super) fn start_bash(dir: &Path, extra: &[&str]) -> Server {
    let shim = dir.join("shim");
    std::fs::create_dir_all(&shim).unwrap();
    let _ = std::os::unix::fs::symlink("/bin/bash", shim.join("sh"));
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut args = vec!["--pipelines-shell", "/bin/bash"];
    args.extend(extra);
    Server::start_with_env(&dir.join("data"), &args, &[("PATH", path)])
}

pub(super) fn succeeded(r: &Value) -> (String, String, String) {
    let c = r["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Succeeded"));
    let get = |k: &str| c.and_then(|c| c[k].as_str()).unwrap_or("").to_string();
    (get("status"), get("reason"), get("message"))
}

pub(super) fn done(r: &Value) -> bool {
    matches!(succeeded(r).0.as_str(), "True" | "False")
}

pub(super) fn items(server: &Server, kind: &str, ns: &str) -> Vec<Value> {
    get_json(server, &["get", kind, "-n", ns])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until run `kind/name` has ended; returns it.
pub(super) async fn ended(server: &Server, kind: &str, ns: &str, name: &str) -> Value {
    eventually(WAIT, &format!("{kind} {ns}/{name} ended"), || async {
        let out = server.cli(&["get", kind, name, "-n", ns, "-o", "json"]);
        let r: Value = serde_json::from_slice(&out.stdout).ok()?;
        done(&r).then_some(r)
    })
    .await
}

pub(super) fn result<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["status"]["results"]
        .as_array()?
        .iter()
        .find(|x| x["name"] == name)
        .map(|x| &x["value"])
}
