//! Ferry's serving: Knative Services (Service → Configuration → immutable Revisions, Routes
//! with traffic splits and tags) run as local processes that scale with load, down to zero and
//! back.
//!
//! - [`spec`]: the YAML shapes (template, containers, traffic) and their validation.
//! - [`kinds`]: the four kinds, registered in the control plane like eventing's.
//! - [`pool`]: one revision's instances at run time: starting, probing, restarting, draining;
//!   the request slots (`containerConcurrency`), the held requests (activator), accounting.
//! - [`process`]: processes (`setpriv --pdeathsig`, pid records reclaimed after a crash),
//!   their output, readiness probes.
//! - [`gateway`]: the HTTP front: Host → route → revision (weighted), proxied and streamed.
//! - [`scaler`]: the loop through the broker: statistics events every second, the KPA decider
//!   as a system trigger publishing decisions, the supervisor as a system trigger applying them.
//! - [`autoscaler`]: the KPA's pure core (settings, windows, decider, bounds).
//! - [`api`]: `ferry logs revision`.

pub mod api;
pub mod autoscaler;
pub mod gateway;
pub mod kinds;
pub mod metrics;
pub mod pool;
pub mod process;
pub mod scaler;
pub mod spec;

use autoscaler::Defaults;
use control::{ControlPlane, Key, Registry};
use gateway::Routes;
use pool::{Hooks, Pool};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How serving is set up (`ferry serve`'s flags and config).
#[derive(Clone, Debug)]
pub struct ServingConfig {
    /// The gateway's bound address (its port goes into URLs).
    pub gateway_addr: SocketAddr,
    /// Hosts are `{name}.{namespace}.{domain}`.
    pub domain: String,
    /// Revisions no route targets kept per configuration (`--revision-history`).
    pub revision_history: usize,
    /// The global autoscaler settings (config-autoscaler).
    pub defaults: Defaults,
    /// Where instances' pids are recorded.
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot start the process spawner: {0}")]
    Spawner(std::io::Error),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Serving's shared state: the revisions' pools, the routing table, the spawner.
pub struct Serving {
    pub config: ServingConfig,
    pools: RwLock<HashMap<Key, Arc<Pool>>>,
    pub routes: Routes,
    spawner: Arc<process::Spawner>,
    control: OnceLock<Weak<ControlPlane>>,
    scaler: scaler::Scaler,
    pub metrics: metrics::ServingMetrics,
    stop: CancellationToken,
    /// Cancelled when the server begins to stop: open `ferry logs -f` streams end.
    streams: CancellationToken,
    me: Weak<Serving>,
}

/// How long start-up waits for the stored routes to be reconciled.
const ROUTES_WAIT: Duration = Duration::from_secs(10);

/// How long deleting a revision waits for its processes to stop.
const STOP_WAIT: Duration = Duration::from_secs(15);

impl Serving {
    pub fn new(
        config: ServingConfig,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, ServingError> {
        let spawner =
            process::Spawner::new(&config.state_dir.join("pids")).map_err(ServingError::Spawner)?;
        let metrics = metrics::ServingMetrics::new(registry)?;
        Ok(Arc::new_cyclic(|me| Self {
            config,
            pools: RwLock::new(HashMap::new()),
            routes: Routes::default(),
            spawner: Arc::new(spawner),
            control: OnceLock::new(),
            scaler: scaler::Scaler::default(),
            metrics,
            streams: CancellationToken::new(),
            stop: CancellationToken::new(),
            me: me.clone(),
        }))
    }

    /// The control plane, once [`start`](Self::start) ran.
    pub fn control(&self) -> Option<Arc<ControlPlane>> {
        self.control.get().and_then(Weak::upgrade)
    }

    /// Starts the loop through the broker (system broker `ferry-system/serving`, the
    /// autoscaler and supervisor triggers, statistics every second) once the control plane
    /// runs.
    pub async fn start(self: &Arc<Self>, cp: &Arc<ControlPlane>) -> Result<(), ServingError> {
        let _ = self.control.set(Arc::downgrade(cp));
        scaler::start(self, cp).await?;
        // What was reconciled before this moment could not report changes: look again.
        for key in self.pool_keys() {
            cp.requeue(key);
        }
        // The gateway answers once the stored routes are in its table (after a restart).
        let routes: Vec<control::Applied> = cp
            .list("Route", None)?
            .into_iter()
            .map(|r| control::Applied {
                kind: r.kind,
                group: kinds::GROUP.into(),
                namespace: r.metadata.namespace,
                name: r.metadata.name,
                action: "unchanged".into(),
            })
            .collect();
        cp.wait_reconciled(&routes, ROUTES_WAIT).await;
        Ok(())
    }

    /// Ends the streams that would otherwise hold the API's graceful shutdown open.
    pub fn end_streams(&self) {
        self.streams.cancel();
    }

    /// Stops every instance of every revision.
    pub async fn stop(&self) {
        self.streams.cancel();
        self.stop.cancel();
        let pools: Vec<Arc<Pool>> = self.read_pools().values().cloned().collect();
        futures::future::join_all(pools.iter().map(|p| p.shutdown(STOP_WAIT))).await;
    }

    fn read_pools(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Arc<Pool>>> {
        self.pools.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_pools(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<Pool>>> {
        self.pools.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pool(&self, key: &Key) -> Option<Arc<Pool>> {
        self.read_pools().get(key).cloned()
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.read_pools().values().cloned().collect()
    }

    fn pool_keys(&self) -> Vec<Key> {
        self.read_pools().keys().cloned().collect()
    }

    /// The pool of a revision, started if new (or if the revision was recreated).
    pub(crate) fn ensure_pool(
        &self,
        r: &control::Resource,
        make: impl FnOnce() -> Arc<Pool>,
    ) -> Arc<Pool> {
        let key = r.key();
        if let Some(p) = self.pool(&key).filter(|p| p.uid == r.metadata.uid) {
            return p;
        }
        let pool = make();
        // A revision recreated under the same name starts its autoscaling afresh.
        self.scaler.forget(&key);
        let old = self.write_pools().insert(key, pool.clone());
        if let Some(old) = old {
            tokio::spawn(async move { old.shutdown(STOP_WAIT).await });
        }
        pool
    }

    /// Stops and forgets a revision's instances.
    pub(crate) async fn remove_pool(&self, key: &Key) {
        let pool = self.write_pools().remove(key);
        self.scaler.forget(key);
        for state in ["ready", "starting"] {
            let _ = self
                .metrics
                .instances
                .remove_label_values(&[&key.namespace, &key.name, state]);
        }
        if let Some(p) = pool {
            p.shutdown(STOP_WAIT).await;
        }
    }

    fn hooks(&self) -> Weak<dyn Hooks> {
        let me: Weak<dyn Hooks> = self.me.clone();
        me
    }

    /// `{name}.{namespace}.{domain}`.
    pub fn host(&self, name: &str, namespace: &str) -> String {
        format!("{name}.{namespace}.{}", self.config.domain)
    }

    /// `http://{host}` with the gateway's port unless it is 80.
    pub fn url(&self, host: &str) -> String {
        match self.config.gateway_addr.port() {
            80 => format!("http://{host}"),
            port => format!("http://{host}:{port}"),
        }
    }
}

impl Hooks for Serving {
    fn status_changed(&self, key: &Key) {
        if let Some(cp) = self.control() {
            cp.requeue(key.clone());
        }
    }

    fn poke(&self, pool: &Arc<Pool>) {
        if let Some(me) = self.me.upgrade() {
            let pool = pool.clone();
            tokio::spawn(async move { scaler::poke(&me, &pool).await });
        }
    }
}

/// Registers serving's kinds (Service, Configuration, Revision, Route).
pub fn register(registry: &mut Registry, serving: &Arc<Serving>) {
    kinds::register(registry, serving);
}
