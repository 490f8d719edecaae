//! `ferry serve`: builds every part from the configuration and runs them until SIGTERM/SIGINT.
//!
//! Shutdown order: `/readyz` turns 503 and the listeners stop accepting; in-flight requests
//! finish (each append is durable before its 202); triggers stop reading, finish their
//! in-flight deliveries and commit; the log flushes and syncs its WAL; exit 0. A grace period
//! bounds each wait.

pub mod config;
#[cfg(test)]
mod validators_proptest;

use anyhow::Context;
use broker::metrics::LogMetrics;
use broker::{EventLog, KafkaLog, Publisher, Retention, RocksLog, RocksOptions, TopicConfig};
pub use config::{ServeArgs, ServeConfig};
use control::api::{self, ApiState};
use control::auth::{Auth, AuthMode, Guard, Listener};
use control::kinds::event_policy::{EventPolicy, Policies, PolicyTable};
use control::store::{KafkaStore, ResourceStore, RocksStore};
use control::{ControlConfig, ControlPlane, Parts, Registry};
use dispatcher::Dispatcher;
use ingress::{IngressMetrics, IngressState, ServerLimits};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// A started server: its addresses, and the handle to stop it.
pub struct Running {
    pub ingress_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub ops_addr: Option<SocketAddr>,
    /// The listeners' certificate, when they serve HTTPS (SIGHUP reloads it).
    pub tls: Option<Arc<ingress::Tls>>,
    serving: Arc<serving::Serving>,
    pipelines: Arc<pipelines::Pipelines>,
    shutdown: CancellationToken,
    ready: Arc<AtomicBool>,
    tasks: JoinSet<anyhow::Result<()>>,
    log: Arc<dyn EventLog>,
    dispatcher: Arc<Dispatcher>,
    control: Arc<ControlPlane>,
    grace: Duration,
}

/// Opens the storage, binds the listeners and starts serving.
pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    // Events, tokens' hashes, Ferry's signing key and the admin token live here: the owner's
    // only.
    // (A directory Ferry's user does not own, e.g. a volume mounted 0777 by root, stays as it
    // is: said in the log, not a reason to stop.)
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o700);
        if let Err(e) = std::fs::set_permissions(&config.data_dir, private) {
            tracing::warn!(
                data_dir = %config.data_dir.display(), error = %e,
                "cannot make the data dir private (0700); keep it from other users"
            );
        }
    }
    let registry = prometheus::Registry::new();
    let log_metrics = LogMetrics::new(&registry).context("registering log metrics")?;
    let options = RocksOptions {
        fsync: config.fsync,
        ..RocksOptions::default()
    };
    let log: Arc<dyn EventLog> = match &config.kafka {
        Some(kafka) => Arc::new(
            KafkaLog::open_measured(kafka.clone(), log_metrics)
                .with_context(|| format!("cannot connect to Kafka at {}", kafka.bootstrap))?,
        ),
        None => {
            let log_dir = config.data_dir.join("log");
            Arc::new(
                RocksLog::open(&log_dir, options, log_metrics).with_context(|| {
                    format!("cannot open the event log in {}", log_dir.display())
                })?,
            )
        }
    };
    let store: Box<dyn ResourceStore> = match &config.kafka {
        Some(kafka) => Box::new(KafkaStore::open(kafka).await.with_context(|| {
            format!(
                "cannot read the resources from Kafka at {}",
                kafka.bootstrap
            )
        })?),
        None => {
            let control_dir = config.data_dir.join("control");
            Box::new(RocksStore::open(&control_dir).with_context(|| {
                format!(
                    "cannot open the resource store in {}",
                    control_dir.display()
                )
            })?)
        }
    };

    let ingress_listener = TcpListener::bind(config.ingress_listen)
        .await
        .with_context(|| format!("cannot listen on {} (ingress)", config.ingress_listen))?;
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (api)", config.api_listen))?;
    let gateway_listener = TcpListener::bind(config.gateway_listen)
        .await
        .with_context(|| format!("cannot listen on {} (gateway)", config.gateway_listen))?;
    let ops_listener = match config.ops_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (ops)"))?,
        ),
        None => None,
    };
    let ops_addr = ops_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let tls = match &config.tls {
        Some((cert, key)) => {
            Some(ingress::Tls::open(cert, key).context("loading --tls-cert and --tls-key")?)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ingress_addr = ingress_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;
    let gateway_addr = gateway_listener.local_addr()?;
    let ingress_url = config
        .ingress_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{ingress_addr}"));

    let topic_defaults = TopicConfig {
        partitions: config.partitions,
        retention: Retention {
            max_age: Some(config.retention),
            max_bytes_per_partition: config.retention_bytes,
        },
    };
    let delivery_store = match &config.kafka {
        Some(kafka) => {
            let cache = config.data_dir.join("dispatch-cache");
            dispatcher::store::DeliveryStore::kafka(kafka, &cache)
                .await
                .with_context(|| {
                    format!(
                        "cannot read retries and dead letters from Kafka at {} into {}",
                        kafka.bootstrap,
                        cache.display()
                    )
                })?
        }
        None => {
            let dispatch_dir = config.data_dir.join("dispatch");
            dispatcher::store::DeliveryStore::open(&dispatch_dir).with_context(|| {
                format!(
                    "cannot open the delivery store in {}",
                    dispatch_dir.display()
                )
            })?
        }
    };
    let address_ca = match &config.tls_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("tls-ca: cannot read {}", path.display()))?,
        ),
        None => None,
    };
    // The one path into every broker: the ingress, replies and the control plane's events.
    let publisher = Arc::new(Publisher::new(log.clone(), config.max_event_size));
    let dispatcher = Dispatcher::with_store(
        publisher.clone(),
        delivery_store,
        &registry,
        config.shutdown_grace,
    )
    .context("starting the dispatcher")?;
    dispatcher.set_networks(config.delivery_networks.clone());
    // Deliveries to destinations with an audience carry Ferry's tokens when auth is on; the
    // issuer comes with the control plane, which starts after the dispatcher.
    let issuer = Arc::new(dispatcher::outbound::Deferred::default());
    if config.auth.mode == AuthMode::Tokens {
        dispatcher.set_token_source(issuer.clone());
    }
    let sinks = ingress::Sinks::default();
    let serving = serving::Serving::new(
        serving::ServingConfig {
            gateway_addr,
            domain: config.serving_domain.clone(),
            revision_history: config.revision_history,
            defaults: config.autoscaler.clone(),
            state_dir: config.data_dir.join("serving"),
        },
        &registry,
    )
    .context("starting serving")?;
    // Deliveries to Services go to the gateway, whatever the system resolves their hosts to.
    let local_gateway = if gateway_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], gateway_addr.port()))
    } else {
        gateway_addr
    };
    dispatcher.route_domain(&config.serving_domain, local_gateway);
    let pipelines = pipelines::Pipelines::new(pipelines::PipelinesConfig {
        work_dir: config.data_dir.join("pipelines"),
        shell: config.pipelines_shell.clone(),
        max_result_size: config.pipelines_max_result_size,
        max_running_tasks: config.pipelines_max_running_tasks,
    })
    .context("starting pipelines")?;
    // Every kind this server serves.
    let mut kinds = Registry::new();
    control::kinds::register_eventing(&mut kinds);
    let policies = Arc::new(PolicyTable::default());
    kinds.register(EventPolicy::new(policies.clone()));
    serving::register(&mut kinds, &serving);
    pipelines::register(&mut kinds, &pipelines);
    let control = ControlPlane::start(Parts {
        store,
        registry: kinds,
        publisher: publisher.clone(),
        dispatcher: dispatcher.clone(),
        sinks: sinks.clone(),
        config: ControlConfig {
            ingress_url: ingress_url.trim_end_matches('/').to_string(),
            topic_defaults,
            sink_batch_records: config.kafka.as_ref().and_then(|k| k.max_batch_records),
            node: node_id(&config.data_dir)?,
            address_ca,
            secrets_dir: config
                .secrets_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("secrets")),
        },
    })
    .await
    .context("starting the control plane")?;
    serving
        .start(&control)
        .await
        .context("starting serving's autoscaler")?;
    pipelines
        .start(&control)
        .await
        .context("starting pipelines' scheduler and executor")?;

    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(true));
    let mut tasks = JoinSet::new();

    let mut auth_config = config.auth.clone();
    auth_config.issuer = config.oidc_issuer.clone().unwrap_or_else(|| {
        let reachable = if api_addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], api_addr.port()))
        } else {
            api_addr
        };
        format!("{scheme}://{reachable}")
    });
    let auth =
        Auth::new(&auth_config, control.clone(), &registry).context("setting up authentication")?;
    auth.load_jwks()
        .await
        .map_err(anyhow::Error::msg)
        .context("jwks: cannot load the issuer's keys")?;
    if let Some(path) = auth
        .bootstrap(&config.data_dir)
        .await
        .context("making the admin token")?
    {
        tracing::warn!(
            path = %path.display(),
            "auth is on and there was no token: an admin token was written to this file \
             (mode 0600); keep it secret and make other tokens with `ferry token create`"
        );
    }
    issuer.set(auth.clone());
    policies
        .load(&control)
        .context("reading the event policies")?;
    let (refreshing, token) = (auth.clone(), shutdown.clone());
    tasks.spawn(async move {
        refreshing.refresh_jwks(token).await;
        Ok(())
    });
    let guard = |listener| {
        axum::middleware::from_fn_with_state(
            Guard {
                auth: auth.clone(),
                listener,
            },
            control::auth::guard,
        )
    };
    let options = |name, limits, refused| ingress::ServeOptions {
        limits,
        tls: tls.clone(),
        refused,
        name,
    };
    if let Some(tls) = &tls {
        let (watched, token) = (tls.clone(), shutdown.clone());
        tasks.spawn(async move {
            watched.watch(token).await;
            Ok(())
        });
    }

    let ingress_metrics = IngressMetrics::new(&registry).context("registering ingress metrics")?;
    let refused_connections = ingress_metrics.refused.with_label_values(&["connections"]);
    let ingress_state =
        IngressState::new(publisher, sinks, config.ingress.clone(), ingress_metrics)
            .with_admission(Arc::new(Policies {
                table: policies,
                auth: auth.clone(),
                control: control.clone(),
                default: config.default_authorization_mode,
            }));
    let token = shutdown.clone();
    let ingress_router = ingress::router(ingress_state).layer(guard(Listener::Ingress));
    let ingress_options = options("ingress", config.ingress_server, Some(refused_connections));
    tasks.spawn(async move {
        ingress::serve(ingress_listener, ingress_router, ingress_options, token).await;
        Ok(())
    });

    let health = Arc::new(control::health::Health::default());
    let (watcher, watched, token) = (health.clone(), control.clone(), shutdown.clone());
    tasks.spawn(async move {
        watcher.watch(watched, token).await;
        Ok(())
    });
    let (beating, token) = (health.clone(), shutdown.clone());
    tasks.spawn(async move {
        beating.beat(token).await;
        Ok(())
    });
    let api_state = ApiState {
        control: control.clone(),
        registry,
        shutdown: shutdown.clone(),
        ready: ready.clone(),
        health,
    };
    if let Some(listener) = ops_listener {
        let (router, token) = (api::ops_router(api_state.clone()), shutdown.clone());
        let ops_options = options("ops", ServerLimits::default(), None);
        tasks.spawn(async move {
            ingress::serve(listener, router, ops_options, token).await;
            Ok(())
        });
    }
    let token = shutdown.clone();
    let api_router = api::router(api_state)
        .merge(serving::api::router(serving.clone()))
        .merge(pipelines::api::router(pipelines.clone()))
        .merge(control::auth::api::router(auth.clone()))
        .layer(guard(Listener::Api));
    let api_options = options("api", ServerLimits::default(), None);
    tasks.spawn(async move {
        ingress::serve(api_listener, api_router, api_options, token).await;
        Ok(())
    });

    let token = shutdown.clone();
    let gateway = serving::gateway::router(serving.clone());
    let gateway_options = options("gateway", ServerLimits::default(), None);
    tasks.spawn(async move {
        ingress::serve(gateway_listener, gateway, gateway_options, token).await;
        Ok(())
    });

    let token = shutdown.clone();
    let retention_log = log.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_INTERVAL);
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    match retention_log.enforce_retention().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(removed = n, "retention removed old events"),
                        Err(e) => tracing::warn!(error = %e, "retention failed"),
                    }
                }
            }
        }
    });

    let token = shutdown.clone();
    let expiring = dispatcher.clone();
    let dead_letter_retention = config.dead_letter_retention;
    tasks.spawn(async move {
        expiring
            .expire_dead_letters(dead_letter_retention, token)
            .await;
        Ok(())
    });

    Ok(Running {
        ingress_addr,
        api_addr,
        gateway_addr,
        ops_addr,
        tls,
        serving,
        pipelines,
        shutdown,
        ready,
        tasks,
        log,
        dispatcher,
        control,
        grace: config.shutdown_grace,
    })
}

impl Running {
    /// The control plane (benchmarks look at statuses in-process).
    pub fn control(&self) -> Arc<ControlPlane> {
        self.control.clone()
    }

    /// Stops intake, waits for in-flight requests (up to the grace period), stops the triggers
    /// (each drains its in-flight deliveries and commits its offsets), flushes the log.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.ready.store(false, Ordering::Release);
        self.shutdown.cancel();
        self.serving.end_streams();
        self.pipelines.end_streams();
        let drained = tokio::time::timeout(self.grace, async {
            while let Some(r) = self.tasks.join_next().await {
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "server task failed"),
                    Err(e) => tracing::error!(error = %e, "server task panicked"),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?self.grace, "in-flight work did not finish in the grace period");
            self.tasks.abort_all();
        }
        // Revisions' processes: drained (the gateway is closed), then SIGTERM.
        self.serving.stop().await;
        // Running TaskRuns are left as they are: after the restart they are reported
        // interrupted (or retried); their steps die with the process.
        self.pipelines.stop(Duration::ZERO).await;
        self.control.stop();
        self.dispatcher.shutdown().await;
        self.log.close().await.context("flushing the event log")?;
        Ok(())
    }
}

/// This node's id: kept in `<data-dir>/node-id`, made (8 hex digits) on the first start. It
/// names the node's own system triggers and the runs it owns: a copied data dir must get a new
/// one (delete the file), and an unreadable one stops the start rather than orphan the runs.
fn node_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        Ok(_) => String::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if id.is_empty() {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        std::fs::write(&path, &id)
            .with_context(|| format!("cannot write the node id to {}", path.display()))?;
        return Ok(id);
    }
    let fine = id.len() <= 16
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !fine {
        anyhow::bail!(
            "{}: {id:?} is not a node id (1 to 16 of a-z and 0-9)",
            path.display()
        );
    }
    Ok(id)
}

/// `ferry serve`: run until SIGTERM or SIGINT, then shut down gracefully.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let running = start(config.clone()).await?;
    // One line each, on stdout, for people and for scripts that start Ferry on port 0.
    let scheme = if running.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("ingress listening on {scheme}://{}", running.ingress_addr);
    println!("api listening on {scheme}://{}", running.api_addr);
    if let Some(ops) = running.ops_addr {
        println!("ops listening on {scheme}://{ops}");
    }
    println!("gateway listening on {scheme}://{}", running.gateway_addr);
    tracing::info!(
        data_dir = %config.data_dir.display(),
        fsync = ?config.fsync,
        "ferry is serving"
    );
    wait_for_signal(running.tls.as_deref()).await?;
    tracing::info!("shutting down");
    running.stop().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Until SIGTERM or SIGINT; SIGHUP reloads the TLS certificate.
async fn wait_for_signal(tls: Option<&ingress::Tls>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            r = tokio::signal::ctrl_c() => return r.context("waiting for SIGINT"),
            _ = hangup.recv() => match tls {
                Some(tls) => tls.reload_logged(),
                None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            },
        }
    }
}
