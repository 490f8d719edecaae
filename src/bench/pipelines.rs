//! `ferry bench pipelines`: what the scheduler through the broker costs per task.
//!
//! (a) a chain of 20 sequential tasks of one `true` step: total time / 20, and that minus a
//!     step's own process start (a `true` step started as the executor starts one — through
//!     `setpriv` and, where there is one, the private view's mount namespace — spawned and
//!     waited for here, the median of 50);
//! (b) 50 independent tasks then one join: wall time;
//! (c) 100 one-task PipelineRuns applied at once: runs per second until all have ended.
//!
//! Each applies through the API and polls the run's status every millisecond in-process.

use super::temp_config;
use anyhow::{bail, Context};
use control::ControlPlane;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct PipelinesBench {
    /// Tasks in the sequential chain.
    #[arg(long, default_value_t = 20)]
    pub chain: usize,
    /// Independent tasks before the join.
    #[arg(long, default_value_t = 50)]
    pub fan_out: usize,
    /// PipelineRuns applied at once.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// `--pipelines-max-running-tasks` of the server [default: 4 × cores].
    #[arg(long)]
    pub max_running_tasks: Option<usize>,
}

/// How often a run's status is looked at.
const POLL: Duration = Duration::from_millis(1);
/// The longest one phase may take.
const PHASE_LIMIT: Duration = Duration::from_secs(600);

fn task(name: &str, after: Option<&str>) -> Value {
    let mut t = json!({"name": name, "taskSpec": {"steps": [{"name": "s", "script": "true"}]}});
    if let Some(a) = after {
        t["runAfter"] = json!([a]);
    }
    t
}

fn pipeline_run(name: &str, tasks: Vec<Value>) -> Value {
    json!({
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"pipelineSpec": {"tasks": tasks}},
    })
}

async fn apply(http: &reqwest::Client, api: &str, docs: Vec<Value>) -> anyhow::Result<()> {
    let resp = http
        .post(format!("{api}/api/v1/apply"))
        .json(&json!({ "documents": docs }))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("apply: {}", resp.text().await.unwrap_or_default());
    }
    Ok(())
}

/// Waits until every run of `names` has ended; fails if one did not succeed.
async fn ended(cp: &ControlPlane, names: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut left: Vec<&String> = names.iter().collect();
    while !left.is_empty() {
        if Instant::now() > deadline {
            bail!("{} runs did not end within {PHASE_LIMIT:?}", left.len());
        }
        let mut still = Vec::new();
        for n in left {
            let r = cp.get("PipelineRun", "bench", n)?;
            match pipelines::status::succeeded(&r.status) {
                Some("True") => {}
                Some("False") => bail!("run {n} failed: {}", pipelines::status::reason(&r.status)),
                _ => still.push(n),
            }
        }
        left = still;
        if !left.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

/// The median time to start a `true` step as the executor does (`setpriv`, the private
/// view's mount namespace and bind mounts where available) and wait for it.
fn process_start(dir: &std::path::Path) -> anyhow::Result<Duration> {
    let private = pipelines::sandbox::private_view_available();
    let sandbox =
        pipelines::sandbox::Sandbox::new(&dir.join("probe"), &Default::default(), private)
            .context("preparing a step's directories")?;
    let (program, args) = sandbox.wrap("true", &[], None);
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    let mut times = Vec::new();
    for _ in 0..50 {
        let mut cmd = if setpriv.exists() {
            let mut c = std::process::Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let t = Instant::now();
        let status = cmd.args(&args).status().context("starting a step")?;
        if !status.success() {
            bail!("a `true` step failed: {status}");
        }
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn run(b: PipelinesBench) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut config = temp_config(&dir, broker::FsyncMode::Always, 4, None);
    config.pipelines_max_running_tasks = b.max_running_tasks.unwrap_or(4 * super::cores());
    let slots = config.pipelines_max_running_tasks;
    let server = crate::serve::start(config).await?;
    let cp: Arc<ControlPlane> = server.control();
    let http = reqwest::Client::new();
    let api = format!("http://{}", server.api_addr);
    let start_cost = process_start(dir.path())?;
    println!(
        "ferry bench pipelines: {} cores, {slots} task slots, private view of /tekton: {}",
        super::cores(),
        pipelines::sandbox::private_view_available()
    );

    // (a) The chain.
    let tasks: Vec<Value> = (0..b.chain)
        .map(|i| {
            let prev = (i > 0).then(|| format!("t{}", i - 1));
            task(&format!("t{i}"), prev.as_deref())
        })
        .collect();
    let t = Instant::now();
    apply(&http, &api, vec![pipeline_run("chain", tasks)]).await?;
    ended(&cp, &["chain".to_string()]).await?;
    let total = t.elapsed();
    let per_task = total / u32::try_from(b.chain.max(1)).unwrap_or(1);
    println!(
        "(a) chain of {}: {:.1} ms total, {:.2} ms per task; minus the step's own process start ({:.2} ms): {:.2} ms per task",
        b.chain,
        ms(total),
        ms(per_task),
        ms(start_cost),
        ms(per_task.saturating_sub(start_cost))
    );

    // (b) Fan-out and join.
    let mut tasks: Vec<Value> = (0..b.fan_out)
        .map(|i| task(&format!("f{i}"), None))
        .collect();
    let mut join = task("join", None);
    join["runAfter"] = json!((0..b.fan_out).map(|i| format!("f{i}")).collect::<Vec<_>>());
    tasks.push(join);
    let t = Instant::now();
    apply(&http, &api, vec![pipeline_run("fan", tasks)]).await?;
    ended(&cp, &["fan".to_string()]).await?;
    println!(
        "(b) fan-out of {} then a join: {:.1} ms wall",
        b.fan_out,
        ms(t.elapsed())
    );

    // (c) Many runs at once.
    let names: Vec<String> = (0..b.runs).map(|i| format!("many-{i}")).collect();
    let docs: Vec<Value> = names
        .iter()
        .map(|n| pipeline_run(n, vec![task("only", None)]))
        .collect();
    let t = Instant::now();
    apply(&http, &api, docs).await?;
    ended(&cp, &names).await?;
    let wall = t.elapsed();
    println!(
        "(c) {} one-task runs applied at once: {:.1} ms until all ended, {:.1} runs/s",
        b.runs,
        ms(wall),
        b.runs as f64 / wall.as_secs_f64()
    );
    server.stop().await
}
