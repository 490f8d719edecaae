//! The dispatcher: one `Runner` (`runner.rs`) per trigger, started, replaced and stopped as
//! triggers change, and the dead-letter store behind `ferry dlq`.

use crate::metrics::DispatchMetrics;
use crate::outbound::{Address, Credentials, Networks, TokenSource};
use crate::policy::DeliveryPolicy;
use crate::runner::{self, Runner, StoreTrouble, TriggerSpec};
use crate::store::{DeadLetterPage, DeliveryStore, StoreError};
use crate::subscriber::{HttpSubscriber, Subscriber};
use broker::{EventLog, LogError, Position, Publisher, Topic};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP client: {0}")]
    Client(String),
}

/// How often dead letters past their retention are looked for.
const DEAD_LETTER_SWEEP: Duration = Duration::from_secs(60);

struct Running {
    stop: CancellationToken,
    runner: Arc<Runner>,
    instance: String,
    handle: JoinHandle<()>,
    /// What the runner was built from; the same again needs no restart.
    fingerprint: String,
}

pub struct Dispatcher {
    /// Where replies go; its log is where triggers read.
    publisher: Arc<Publisher>,
    store: Arc<DeliveryStore>,
    metrics: DispatchMetrics,
    client: reqwest::Client,
    /// Hosts the client sends to a local address (Services at the serving gateway), and the
    /// networks deliveries may reach.
    local_hosts: Arc<LocalHosts>,
    /// Mints the tokens of deliveries to destinations with an audience.
    tokens: std::sync::OnceLock<Arc<dyn TokenSource>>,
    runners: tokio::sync::Mutex<HashMap<String, Running>>,
    /// How long a stopping trigger waits for its in-flight deliveries.
    grace: Duration,
}

impl Dispatcher {
    /// A dispatcher whose retries and dead letters are kept in RocksDB at `store_path`.
    pub fn open(
        publisher: Arc<Publisher>,
        store_path: &Path,
        registry: &prometheus::Registry,
        grace: Duration,
    ) -> Result<Arc<Self>, DispatchError> {
        Self::with_store(publisher, DeliveryStore::open(store_path)?, registry, grace)
    }

    /// A dispatcher on a given delivery store (RocksDB or Kafka).
    pub fn with_store(
        publisher: Arc<Publisher>,
        store: DeliveryStore,
        registry: &prometheus::Registry,
        grace: Duration,
    ) -> Result<Arc<Self>, DispatchError> {
        let local_hosts = Arc::new(LocalHosts::default());
        let client = client_builder(&local_hosts)
            .build()
            .map_err(|e| DispatchError::Client(e.to_string()))?;
        Ok(Arc::new(Self {
            publisher,
            store: Arc::new(store),
            metrics: DispatchMetrics::new(registry)?,
            client,
            local_hosts,
            tokens: std::sync::OnceLock::new(),
            runners: tokio::sync::Mutex::new(HashMap::new()),
            grace,
        }))
    }

    /// Sends every host under `domain` (`*.localhost`) to `addr` (the serving gateway, which
    /// routes by the Host header), whatever the system's resolver says of those names.
    pub fn route_domain(&self, domain: &str, addr: SocketAddr) {
        self.local_hosts
            .routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((format!(".{}", domain.to_ascii_lowercase()), addr));
    }

    /// The networks deliveries may reach (`--delivery-deny-cidr`, `--delivery-allow-cidr`).
    pub fn set_networks(&self, networks: Networks) {
        *self
            .local_hosts
            .networks
            .write()
            .unwrap_or_else(|p| p.into_inner()) = networks;
    }

    /// Where the tokens of deliveries to destinations with an audience come from (none: auth
    /// is off, and deliveries carry no token).
    pub fn set_token_source(&self, tokens: Arc<dyn TokenSource>) {
        let _ = self.tokens.set(tokens);
    }

    /// Whether deliveries may go to `url` (its scheme, and its host's networks); the error
    /// says why not.
    pub async fn check_destination(&self, url: &str) -> Result<(), String> {
        let networks = self
            .local_hosts
            .networks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        networks.check(url).await
    }

    /// An HTTP subscriber at `address`, sending as `sender` (a JWT for the address's
    /// audience, if it has one): the dispatcher's connection pool, or a client of its own when
    /// the address brings CA certificates. The error says what is wrong with the address.
    pub fn http_subscriber(
        &self,
        address: &Address,
        sender: &str,
        policy: &DeliveryPolicy,
    ) -> Result<Arc<dyn Subscriber>, String> {
        let client = match &address.ca_certs {
            None => self.client.clone(),
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|e| format!("CACerts: not PEM certificates: {e}"))?;
                if certs.is_empty() {
                    return Err("CACerts: no PEM certificate in it".into());
                }
                certs
                    .into_iter()
                    .fold(client_builder(&self.local_hosts), |b, c| {
                        b.add_root_certificate(c)
                    })
                    .build()
                    .map_err(|e| format!("CACerts: {e}"))?
            }
        };
        // Without a token source (auth off) an audience is not acted on.
        let credentials = match (&address.audience, self.tokens.get()) {
            (Some(audience), Some(tokens)) => Some(Credentials {
                subject: sender.to_string(),
                audience: audience.clone(),
                tokens: tokens.clone(),
            }),
            _ => None,
        };
        Ok(Arc::new(HttpSubscriber::new(
            client,
            &address.url,
            policy.format,
            policy.timeout,
            credentials,
        )))
    }

    /// Commits `namespace/name`'s consumer group at the log end, so a new trigger gets every
    /// event after it is Ready and none before (K-06).
    pub async fn start_at_end(
        &self,
        topic: &Topic,
        namespace: &str,
        name: &str,
    ) -> Result<(), DispatchError> {
        commit_at_end(
            self.publisher.log().as_ref(),
            topic,
            &runner::group(namespace, name),
        )
        .await
    }
}

/// Commits `group` at the end of `topic` in `log`: the group gets what comes after, nothing
/// from before (K-06, KS-06).
pub async fn commit_at_end(
    log: &dyn EventLog,
    topic: &Topic,
    group: &str,
) -> Result<(), DispatchError> {
    {
        let ends: Vec<Position> = log
            .watermarks(topic)
            .await?
            .iter()
            .enumerate()
            .map(|(p, w)| Position {
                partition: p as u32,
                offset: w.end,
            })
            .collect();
        log.commit(topic, group, &ends).await?;
        Ok(())
    }
}

impl Dispatcher {
    /// Runs `spec`, replacing the trigger's previous runner (which drains and commits first),
    /// unless that runner was built from the same `fingerprint` (everything the spec was
    /// compiled from), in which case nothing changes.
    pub async fn run(&self, spec: TriggerSpec, fingerprint: String) {
        let key = spec.key();
        let old = {
            let mut runners = self.runners.lock().await;
            if runners
                .get(&key)
                .is_some_and(|r| r.fingerprint == fingerprint && !r.handle.is_finished())
            {
                return;
            }
            runners.remove(&key)
        };
        // Drain the old runner without holding the table: other triggers stay manageable.
        if let Some(old) = old {
            if old.instance != spec.instance {
                old.runner
                    .superseded
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            stop(old).await;
        }
        let stop_token = CancellationToken::new();
        let runner = Runner::new(
            spec,
            self.publisher.clone(),
            self.store.clone(),
            self.metrics.clone(),
            stop_token.clone(),
        );
        let instance = runner.instance().to_string();
        let handle = tokio::spawn(runner.clone().run(self.grace));
        self.runners.lock().await.insert(
            key,
            Running {
                stop: stop_token,
                runner,
                instance,
                handle,
                fingerprint,
            },
        );
    }

    /// Stops a trigger's runner, if it runs.
    pub async fn stop(&self, namespace: &str, name: &str) {
        let old = self
            .runners
            .lock()
            .await
            .remove(&format!("{namespace}/{name}"));
        if let Some(old) = old {
            stop(old).await;
        }
    }

    /// The names of the runners in `namespace` whose name starts with `prefix`.
    pub async fn running(&self, namespace: &str, prefix: &str) -> Vec<String> {
        let start = format!("{namespace}/{prefix}");
        self.runners
            .lock()
            .await
            .keys()
            .filter_map(|k| k.strip_prefix(&start).map(|rest| format!("{prefix}{rest}")))
            .collect()
    }

    /// Stops a deleted trigger and forgets its pending retries and dead letters.
    pub async fn forget(&self, namespace: &str, name: &str) -> Result<(), DispatchError> {
        self.stop(namespace, name).await;
        self.store
            .purge(&format!("{namespace}/{name}"), true)
            .await?;
        // Its gauges go with it (a scrape would report a lag of a trigger that is no more).
        for gauge in [
            &self.metrics.lag,
            &self.metrics.partitions,
            &self.metrics.retry_queue,
            &self.metrics.dead_letter_store,
        ] {
            let _ = gauge.remove_label_values(&[namespace, name]);
        }
        Ok(())
    }

    pub async fn is_running(&self, namespace: &str, name: &str) -> bool {
        self.runners
            .lock()
            .await
            .contains_key(&format!("{namespace}/{name}"))
    }

    /// While the trigger's writes to the delivery store fail on this node: why, and since when.
    pub async fn store_trouble(&self, namespace: &str, name: &str) -> Option<StoreTrouble> {
        self.runners
            .lock()
            .await
            .get(&format!("{namespace}/{name}"))
            .and_then(|r| r.runner.store_trouble())
    }

    /// Stops every trigger (each drains its in-flight deliveries and commits).
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self.runners.lock().await.drain().map(|(_, r)| r).collect();
        for r in &all {
            r.stop.cancel();
        }
        for r in all {
            stop(r).await;
        }
    }

    /// A page of a trigger's dead letters, oldest first: up to `limit`, after the page that
    /// ended at `after`.
    pub fn dead_letters(
        &self,
        namespace: &str,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, DispatchError> {
        Ok(self
            .store
            .dead_letters(&format!("{namespace}/{name}"), after, limit)?)
    }

    /// Sends dead letters (one by id, or all) back for delivery. Returns how many.
    pub async fn replay(
        &self,
        namespace: &str,
        name: &str,
        id: Option<&str>,
    ) -> Result<usize, DispatchError> {
        Ok(self
            .store
            .replay(&format!("{namespace}/{name}"), id, runner::now_ms())
            .await?)
    }

    pub async fn purge(&self, namespace: &str, name: &str) -> Result<usize, DispatchError> {
        Ok(self
            .store
            .purge(&format!("{namespace}/{name}"), false)
            .await?)
    }

    /// Deletes dead letters older than `retention`, every minute, until `stop`.
    pub async fn expire_dead_letters(&self, retention: Duration, stop: CancellationToken) {
        loop {
            let cutoff = runner::now_ms().saturating_sub(retention.as_millis() as u64);
            match self.store.expire_dead_letters(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    dead_letters = n,
                    "dead letters past their retention deleted"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot delete expired dead letters"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(DEAD_LETTER_SWEEP) => {}
            }
        }
    }

    /// Why the delivery store refuses writes, while it does.
    pub fn store_failing(&self) -> Option<String> {
        self.store.failing()
    }

    /// Tries a write to the delivery store: true if it takes writes.
    pub async fn probe_store(&self) -> bool {
        self.store.probe().await
    }
}

async fn stop(r: Running) {
    r.stop.cancel();
    if let Err(e) = r.handle.await {
        tracing::error!(error = %e, "a trigger runner failed");
    }
}

/// The dispatcher's clients: a pool per host, no redirects followed (a 3xx fails the
/// delivery), no proxy, names resolved by [`LocalHosts`].
fn client_builder(hosts: &Arc<LocalHosts>) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve the destination itself, past the denied networks.
        .no_proxy()
        .dns_resolver(hosts.clone())
}

/// The dispatcher's resolver: hosts under a routed domain go to a local address (Services at
/// the gateway); other names resolve as the system says, less the addresses of denied
/// networks (a name that resolves only into them fails the delivery).
#[derive(Default)]
struct LocalHosts {
    routes: std::sync::RwLock<Vec<(String, SocketAddr)>>,
    networks: std::sync::RwLock<Networks>,
}

impl reqwest::dns::Resolve for LocalHosts {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let local = self.routes.read().ok().and_then(|d| {
            d.iter()
                .find(|(suffix, _)| host.ends_with(suffix.as_str()))
                .map(|(_, addr)| *addr)
        });
        let networks = self
            .networks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match local {
                Some(addr) => vec![addr],
                None => {
                    let all: Vec<SocketAddr> =
                        tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
                    let allowed: Vec<SocketAddr> = all
                        .iter()
                        .copied()
                        .filter(|a| networks.refuses(a.ip()).is_none())
                        .collect();
                    if allowed.is_empty() {
                        if let Some(a) = all.first() {
                            let why = networks.refuses(a.ip()).unwrap_or_default();
                            return Err(format!("{host}: {why}").into());
                        }
                    }
                    allowed
                }
            };
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}
