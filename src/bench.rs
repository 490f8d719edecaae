//! `ferry bench`: load tests of the real stack over loopback, on this machine.
//!
//! - `ingress.rs`: events/s and latency of durable appends, against a no-op HTTP ceiling.
//! - `dispatch.rs`: ingress→subscriber latency and delivery throughput of triggers.
//! - `serving.rs`: cold starts, the gateway's overhead against direct, a burst from zero.
//! - `pipelines.rs`: the scheduler's cost per task (a chain, a fan-out, many runs at once).
//! - `backlog.rs`: one trigger's subscriber down under load, then back: memory and drain.
//! - `soak.rs`: a fixed rate for a long time, a flaky subscriber, kill -9s: lost and duplicated.
//! - `load.rs`: the load generator (keep-alive HTTP/1.1 connections, binary-mode events).
//!
//! Each starts a full server (RocksDB in a temp dir) in this process: the real stack, with
//! load generator, server and subscribers sharing the machine's cores (the soak runs the
//! `ferry serve` binary as a child process, so that it can kill it).

mod backlog;
mod dispatch;
mod ingress;
mod load;
mod pipelines;
mod serving;
mod soak;

use crate::serve::{self, ServeConfig};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Events/s and latency of the ingress (durable appends), against a no-op HTTP ceiling.
    Ingress(ingress::IngressBench),
    /// Ingress→subscriber latency and deliveries/s of triggers.
    Dispatch(dispatch::DispatchBench),
    /// Serving: cold starts, the gateway's overhead, a burst from zero.
    Serving(serving::ServingBench),
    /// Pipelines: overhead per sequential task, a fan-out and join, runs/s.
    Pipelines(pipelines::PipelinesBench),
    /// A fixed event rate through a broker and trigger for a while, the subscriber failing a
    /// fraction at random and Ferry killed with -9 now and then: nothing acknowledged lost.
    Soak(soak::SoakBench),
    /// One trigger's subscriber down while events arrive, then back: the other trigger's
    /// rate beside it, memory, and how long the backlog takes to drain.
    Backlog(backlog::BacklogBench),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingress(b) => ingress::run(b).await,
        BenchCommand::Dispatch(b) => dispatch::run(b).await,
        BenchCommand::Serving(b) => serving::run(b).await,
        BenchCommand::Pipelines(b) => pipelines::run(b).await,
        BenchCommand::Soak(b) => soak::run(b).await,
        BenchCommand::Backlog(b) => backlog::run(b).await,
    }
}

fn parse_fsync(s: &str) -> anyhow::Result<broker::FsyncMode> {
    match s {
        "always" => Ok(broker::FsyncMode::Always),
        "never" => Ok(broker::FsyncMode::Never),
        other => anyhow::bail!("--fsync {other:?}: use always or never"),
    }
}

/// A full server on a temp dir and ports chosen by the OS.
async fn temp_server(
    dir: &tempfile::TempDir,
    fsync: broker::FsyncMode,
    partitions: u32,
    kafka: Option<broker::KafkaOptions>,
) -> anyhow::Result<serve::Running> {
    serve::start(temp_config(dir, fsync, partitions, kafka)).await
}

/// The configuration of [`temp_server`].
fn temp_config(
    dir: &tempfile::TempDir,
    fsync: broker::FsyncMode,
    partitions: u32,
    kafka: Option<broker::KafkaOptions>,
) -> ServeConfig {
    ServeConfig {
        data_dir: dir.path().to_path_buf(),
        ingress_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ingress_url: None,
        fsync,
        partitions,
        retention: Duration::from_secs(3600),
        retention_bytes: None,
        dead_letter_retention: Duration::from_secs(3600),
        max_event_size: 1024 * 1024,
        shutdown_grace: Duration::from_secs(2),
        kafka,
        gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        serving_domain: "localhost".into(),
        revision_history: 20,
        pipelines_shell: "sh".into(),
        pipelines_max_result_size: 1 << 20,
        pipelines_max_running_tasks: 64,
        ingress_server: ::ingress::ServerLimits::default(),
        ingress: ::ingress::IngressConfig::default(),
        autoscaler: Default::default(),
        otlp_endpoint: None,
        tls: None,
        ops_listen: None,
        auth: Default::default(),
        insecure_no_auth: false,
        tls_ca: None,
        oidc_issuer: None,
        default_authorization_mode: Default::default(),
        delivery_networks: Default::default(),
        secrets_dir: None,
    }
}

/// Benchmark the Kafka engine instead of RocksDB.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers: benchmark the Kafka engine against them.
    #[arg(long)]
    pub kafka: Option<String>,
    /// librdkafka's batch.num.messages (1 for tansu 0.6).
    #[arg(long)]
    pub kafka_max_batch_records: Option<usize>,
    /// Triggers' fetch.wait.max.ms, like 10ms (see `ferry serve --kafka-fetch-wait`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kafka_fetch_wait: Option<Duration>,
}

impl KafkaArgs {
    /// The engine as the bench's header line names it.
    fn describe(&self, fsync: &str) -> String {
        match &self.kafka {
            Some(b) => format!("engine=kafka at {b}"),
            None => format!("engine=rocksdb fsync={fsync}"),
        }
    }

    fn options(&self) -> Option<broker::KafkaOptions> {
        self.kafka.clone().map(|bootstrap| broker::KafkaOptions {
            bootstrap,
            replication_factor: 1,
            max_batch_records: self.kafka_max_batch_records,
            fetch_wait: self.kafka_fetch_wait,
            produce_timeout: None,
            min_insync_replicas: None,
            security: Default::default(),
        })
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A value of a Prometheus text exposition (the first sample of `name`).
/// Applies resources (JSON documents) through a server's API.
async fn apply(api: &str, docs: Vec<serde_json::Value>) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .post(format!("{api}/api/v1/apply"))
        .json(&serde_json::json!({ "documents": docs }))
        .send()
        .await?;
    if !resp.status().is_success() {
        anyhow::bail!(
            "applying the bench resources failed: {}",
            resp.text().await?
        );
    }
    Ok(())
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
