//! `ferry bench ingress`: drives the ingress with N keep-alive connections posting binary-mode
//! events for T seconds, then a no-op HTTP server on the same stack (axum, same runtime,
//! answers 202 after reading the body) the same way: the ceiling. The ratio is what the
//! broker's own work costs (parse, encode, group-committed fsync).

use super::load::{self, Load};
use super::{cores, metric, parse_fsync, temp_server};
use anyhow::Context;
use axum::routing::post;
use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct IngressBench {
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How long each phase runs, like 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Event data size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// fsync mode of the log: always or never.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Partitions of the benchmarked broker.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    #[command(flatten)]
    pub kafka: super::KafkaArgs,
}

pub async fn run(b: IngressBench) -> anyhow::Result<()> {
    let fsync = parse_fsync(&b.fsync)?;
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    println!(
        "ferry bench ingress: {} connections, {:?} per phase, {}-byte binary-mode events, {}, {} partitions, {} cores",
        b.connections, b.duration, b.size, b.kafka.describe(&b.fsync), b.partitions, cores()
    );
    let server = temp_server(&dir, fsync, b.partitions, b.kafka.options()).await?;
    let mut spec = Load {
        addr: server.ingress_addr,
        path: "/default/default".into(),
        connections: b.connections,
        duration: b.duration,
        size: b.size,
        event_type: "bench.event".into(),
        rate: None,
    };
    let ferry = load::run(&spec).await?;
    let stats = reqwest::get(format!("http://{}/metrics", server.api_addr))
        .await?
        .text()
        .await?;
    server.stop().await?;
    println!("{}", ferry.line("ferry ingress"));
    let fsyncs = metric(&stats, "ferry_log_fsyncs_total");
    let appended = metric(&stats, "ferry_log_appended_events_total");
    if fsyncs > 0.0 {
        println!(
            "{:<16} {fsyncs:.0} fsyncs for {appended:.0} events: {:.1} events per group commit",
            "",
            appended / fsyncs
        );
    }

    let (addr, stop) = noop_server().await?;
    spec.addr = addr;
    let ceiling = load::run(&spec).await?;
    stop.cancel();
    println!("{}", ceiling.line("no-op ceiling"));
    println!(
        "ratio            {:.2} of the no-op ceiling; {:.0} events/s per core",
        ferry.rate() / ceiling.rate(),
        ferry.rate() / cores() as f64
    );
    Ok(())
}

async fn noop_server() -> anyhow::Result<(SocketAddr, tokio_util::sync::CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let token = tokio_util::sync::CancellationToken::new();
    let app = axum::Router::new().route(
        "/{ns}/{name}",
        post(|_body: Bytes| async { axum::http::StatusCode::ACCEPTED }),
    );
    let t = token.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(t.cancelled_owned())
            .await;
    });
    Ok((addr, token))
}
