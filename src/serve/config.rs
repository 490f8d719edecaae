//! `ferry serve` configuration: flags, env vars (`FERRY_*`) and an optional YAML file, merged
//! in that order of precedence over the defaults; then validated as a whole.

use anyhow::Context;
use broker::FsyncMode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod kafka_security;
mod parse;
mod validate;
use parse::{
    humantime_serde_opt, mode_opt, nets, parse_auth, parse_fsync, parse_humantime, parse_mode,
    parse_net, parse_protocol, protocol_opt,
};

/// Flags of `ferry serve`. Each is also an env var; a YAML file (`--config`) may set any of
/// them under the same name (`data-dir: /var/lib/ferry`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServeArgs {
    /// YAML configuration file (keys: the long flag names without `--`).
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the event log and resources are kept [default: ./ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the CloudEvents ingress [default: 127.0.0.1:8080].
    #[arg(long, env = "FERRY_INGRESS_LISTEN")]
    pub ingress_listen: Option<SocketAddr>,
    /// Address of the control API, /metrics, /healthz and /readyz [default: 127.0.0.1:8081].
    #[arg(long, env = "FERRY_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Base URL producers use to reach the ingress, shown in brokers' status.address.url
    /// [default: http://<ingress-listen>].
    #[arg(long, env = "FERRY_INGRESS_URL")]
    pub ingress_url: Option<String>,
    /// `always`: every acknowledged event is fsynced (group commit); `never`: written to the
    /// WAL without fsync, lost on power failure (not on a crash of Ferry) [default: always].
    #[arg(long, env = "FERRY_FSYNC", value_parser = parse_fsync)]
    pub fsync: Option<FsyncMode>,
    /// Partitions of each new broker's log [default: 4].
    #[arg(long, env = "FERRY_PARTITIONS")]
    pub partitions: Option<u32>,
    /// Events older than this are removed, like `7d` or `12h` [default: 7d].
    #[arg(long, env = "FERRY_RETENTION", value_parser = parse_humantime)]
    pub retention: Option<Duration>,
    /// Per partition: oldest events are removed above this many bytes [default: unlimited].
    #[arg(long, env = "FERRY_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// Events kept in Ferry's dead-letter store are deleted after this long [default: 14d].
    #[arg(long, env = "FERRY_DEAD_LETTER_RETENTION", value_parser = parse_humantime)]
    pub dead_letter_retention: Option<Duration>,
    /// Largest event the ingress accepts, in bytes [default: 1048576].
    #[arg(long, env = "FERRY_MAX_EVENT_SIZE")]
    pub max_event_size: Option<usize>,
    /// How long shutdown waits for in-flight requests before it gives up [default: 30s].
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE", value_parser = parse_humantime)]
    pub shutdown_grace: Option<Duration>,
    /// Keep brokers' events in Apache Kafka at these bootstrap servers (host:port,...) instead
    /// of the embedded RocksDB log.
    #[arg(long, env = "FERRY_KAFKA")]
    pub kafka: Option<String>,
    /// Replication factor of the Kafka topics Ferry creates [default: 1; use 3 on a real cluster].
    #[arg(long, env = "FERRY_KAFKA_REPLICATION_FACTOR")]
    pub kafka_replication_factor: Option<i32>,
    /// Most records per producer batch (librdkafka's batch.num.messages) [default: librdkafka's].
    /// Set 1 against tansu 0.6, which reports a wrong log end after a multi-record batch.
    #[arg(long, env = "FERRY_KAFKA_MAX_BATCH_RECORDS")]
    pub kafka_max_batch_records: Option<usize>,
    /// Longest a trigger's Kafka fetch waits for records, like `10ms` (fetch.wait.max.ms)
    /// [default: librdkafka's 500ms]. Lower it only against a server that holds fetches (tansu).
    #[arg(long, env = "FERRY_KAFKA_FETCH_WAIT", value_parser = parse_humantime)]
    pub kafka_fetch_wait: Option<Duration>,
    /// How long an append waits for Kafka's acknowledgement before the ingress answers 503,
    /// like `5s` (message.timeout.ms) [default: 30s].
    #[arg(long, env = "FERRY_KAFKA_PRODUCE_TIMEOUT", value_parser = parse_humantime)]
    pub kafka_produce_timeout: Option<Duration>,
    /// `min.insync.replicas` of the Kafka topics Ferry creates [default: 2 with a replication
    /// factor of 3 or more, else the cluster's default].
    #[arg(long, env = "FERRY_KAFKA_MIN_INSYNC_REPLICAS")]
    pub kafka_min_insync_replicas: Option<i32>,
    /// How Ferry connects to Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    /// [default: PLAINTEXT].
    #[arg(long, env = "FERRY_KAFKA_SECURITY_PROTOCOL", value_parser = parse_protocol)]
    pub kafka_security_protocol: Option<broker::kafka::security::Protocol>,
    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "FERRY_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// SASL user.
    #[arg(long, env = "FERRY_KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    /// File holding the SASL password (or env FERRY_KAFKA_SASL_PASSWORD).
    #[arg(long, env = "FERRY_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// PEM CA certificate(s) of the Kafka brokers' certificates [default: the system's].
    #[arg(long, env = "FERRY_KAFKA_CA_FILE")]
    pub kafka_ca_file: Option<PathBuf>,
    /// PEM client certificate for TLS client authentication (with --kafka-key-file).
    #[arg(long, env = "FERRY_KAFKA_CERT_FILE")]
    pub kafka_cert_file: Option<PathBuf>,
    /// PEM key of --kafka-cert-file.
    #[arg(long, env = "FERRY_KAFKA_KEY_FILE")]
    pub kafka_key_file: Option<PathBuf>,
    /// Where secrets that resources reference are: `<dir>/<namespace>/<name>/<key>` (KafkaSource
    /// `spec.net`, KafkaSink `spec.auth`) [default: <data-dir>/secrets].
    #[arg(long, env = "FERRY_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Address of the serving gateway (Knative Services by Host) [default: 127.0.0.1:8082].
    #[arg(long, env = "FERRY_GATEWAY_LISTEN")]
    pub gateway_listen: Option<SocketAddr>,
    /// Services are at `{name}.{namespace}.{domain}` [default: localhost].
    #[arg(long, env = "FERRY_SERVING_DOMAIN")]
    pub serving_domain: Option<String>,
    /// Revisions no route targets kept per configuration; older ones are removed [default: 20].
    #[arg(long, env = "FERRY_REVISION_HISTORY")]
    pub revision_history: Option<usize>,
    /// Interpreter of pipeline step scripts without a `#!` line (run as `SHELL -c`, with
    /// Tekton's `set -e`) [default: sh].
    #[arg(long, env = "FERRY_PIPELINES_SHELL")]
    pub pipelines_shell: Option<String>,
    /// Largest result a pipeline task may write, in bytes [default: 1048576].
    #[arg(long, env = "FERRY_PIPELINES_MAX_RESULT_SIZE")]
    pub pipelines_max_result_size: Option<usize>,
    /// Pipeline TaskRuns running at once on this node; the others wait, Pending
    /// [default: 4 × the number of cores].
    #[arg(long, env = "FERRY_PIPELINES_MAX_RUNNING_TASKS")]
    pub pipelines_max_running_tasks: Option<usize>,
    /// Connections the ingress holds at once; one more gets 503 and is closed [default: 10000].
    #[arg(long, env = "FERRY_INGRESS_MAX_CONNECTIONS")]
    pub ingress_max_connections: Option<usize>,
    /// Requests the ingress handles at once; one more gets 503 + Retry-After [default: 1024].
    #[arg(long, env = "FERRY_INGRESS_MAX_IN_FLIGHT")]
    pub ingress_max_in_flight: Option<usize>,
    /// Request-body bytes the ingress holds at once; over it, 503 + Retry-After
    /// [default: 268435456].
    #[arg(long, env = "FERRY_INGRESS_MAX_BUFFERED_BYTES")]
    pub ingress_max_buffered_bytes: Option<usize>,
    /// A request's whole header must arrive within this; also how long a kept-alive
    /// connection may idle between requests [default: 30s].
    #[arg(long, env = "FERRY_INGRESS_HEADER_TIMEOUT", value_parser = parse_humantime)]
    pub ingress_header_timeout: Option<Duration>,
    /// A request's body must arrive within this, else 408 [default: 60s].
    #[arg(long, env = "FERRY_INGRESS_BODY_TIMEOUT", value_parser = parse_humantime)]
    pub ingress_body_timeout: Option<Duration>,
    /// Export spans over OTLP/HTTP (protobuf) to this collector, e.g. http://127.0.0.1:4318
    /// (`/v1/traces` is added) [default: none, no spans leave the process].
    #[arg(long, env = "FERRY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// PEM certificate chain: with `--tls-key`, every listener (ingress, API, gateway, ops)
    /// serves HTTPS; reloaded when the files change or on SIGHUP.
    #[arg(long, env = "FERRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "FERRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Address of a listener for /metrics, /healthz and /readyz only, with no token needed
    /// (for probes and scrapers) [default: none; they stay on the API listener].
    #[arg(long, env = "FERRY_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// `tokens`: every API and ingress request needs `Authorization: Bearer <token>`;
    /// `none`: no authentication, allowed on loopback addresses only unless
    /// `--insecure-no-auth` [default: none].
    #[arg(long, env = "FERRY_AUTH", value_parser = parse_auth)]
    pub auth: Option<control::auth::AuthMode>,
    /// The admin token is this file's contents (a secret mounted by an orchestrator)
    /// [default: Ferry makes one on the first start, in <data-dir>/admin-token].
    #[arg(long, env = "FERRY_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve without authentication on addresses other than loopback: anyone who can reach
    /// them can change every resource and read every event.
    #[arg(long, env = "FERRY_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// PEM CA certificate(s) that signed --tls-cert: published as brokers' and sinks'
    /// `status.address.CACerts`, so deliveries to Ferry's own HTTPS addresses trust it.
    #[arg(long, env = "FERRY_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Ferry's own issuer (`iss` of the JWTs its deliveries carry; discovery at
    /// /.well-known/openid-configuration) [default: the API's URL].
    #[arg(long, env = "FERRY_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Accept JWTs signed by the keys of this JWKS (a file, or an http(s) URL fetched every
    /// 5 minutes); RS256 or ES256.
    #[arg(long, env = "FERRY_JWKS")]
    pub jwks: Option<String>,
    /// The `iss` those JWTs must carry [default: not checked].
    #[arg(long, env = "FERRY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` a JWT for the control API must carry [default: ferry].
    #[arg(long, env = "FERRY_JWT_API_AUDIENCE")]
    pub jwt_api_audience: Option<String>,
    /// Who may send to a broker or sink no EventPolicy selects: allow-same-namespace,
    /// allow-all or deny-all [default: allow-same-namespace].
    #[arg(long, env = "FERRY_DEFAULT_AUTHORIZATION_MODE", value_parser = parse_mode)]
    pub default_authorization_mode: Option<control::kinds::event_policy::DefaultMode>,
    /// Networks deliveries may not reach (CIDRs or addresses, comma-separated or repeated)
    /// [default: 169.254.0.0/16,fe80::/10: link-local, where cloud metadata answers].
    #[arg(long, env = "FERRY_DELIVERY_DENY_CIDR", value_delimiter = ',', value_parser = parse_net)]
    pub delivery_deny_cidr: Vec<ipnet::IpNet>,
    /// If given, the only networks deliveries may reach (the deny list still applies).
    #[arg(long, env = "FERRY_DELIVERY_ALLOW_CIDR", value_delimiter = ',', value_parser = parse_net)]
    pub delivery_allow_cidr: Vec<ipnet::IpNet>,
}

/// The YAML file's shape (same names as the flags).
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    ingress_listen: Option<SocketAddr>,
    api_listen: Option<SocketAddr>,
    ingress_url: Option<String>,
    fsync: Option<FsyncMode>,
    partitions: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    retention: Option<Duration>,
    retention_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde_opt")]
    dead_letter_retention: Option<Duration>,
    max_event_size: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_grace: Option<Duration>,
    kafka: Option<String>,
    kafka_replication_factor: Option<i32>,
    kafka_max_batch_records: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    kafka_fetch_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    kafka_produce_timeout: Option<Duration>,
    kafka_min_insync_replicas: Option<i32>,
    #[serde(default, with = "protocol_opt")]
    kafka_security_protocol: Option<broker::kafka::security::Protocol>,
    kafka_sasl_mechanism: Option<String>,
    kafka_sasl_username: Option<String>,
    kafka_sasl_password_file: Option<PathBuf>,
    kafka_ca_file: Option<PathBuf>,
    kafka_cert_file: Option<PathBuf>,
    kafka_key_file: Option<PathBuf>,
    secrets_dir: Option<PathBuf>,
    gateway_listen: Option<SocketAddr>,
    serving_domain: Option<String>,
    revision_history: Option<usize>,
    pipelines_shell: Option<String>,
    pipelines_max_result_size: Option<usize>,
    pipelines_max_running_tasks: Option<usize>,
    ingress_max_connections: Option<usize>,
    ingress_max_in_flight: Option<usize>,
    ingress_max_buffered_bytes: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    ingress_header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    ingress_body_timeout: Option<Duration>,
    otlp_endpoint: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ops_listen: Option<SocketAddr>,
    auth: Option<control::auth::AuthMode>,
    admin_token_file: Option<PathBuf>,
    insecure_no_auth: Option<bool>,
    tls_ca: Option<PathBuf>,
    oidc_issuer: Option<String>,
    jwks: Option<String>,
    jwt_issuer: Option<String>,
    jwt_api_audience: Option<String>,
    #[serde(default, with = "mode_opt")]
    default_authorization_mode: Option<control::kinds::event_policy::DefaultMode>,
    #[serde(default, with = "nets")]
    delivery_deny_cidr: Option<Vec<ipnet::IpNet>>,
    #[serde(default, with = "nets")]
    delivery_allow_cidr: Option<Vec<ipnet::IpNet>>,
    /// Knative's config-autoscaler keys (`stable-window: 60s`, ...).
    #[serde(default)]
    autoscaler: BTreeMap<String, serde_yaml_ng::Value>,
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub ingress_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub ingress_url: Option<String>,
    pub fsync: FsyncMode,
    pub partitions: u32,
    pub retention: Duration,
    pub retention_bytes: Option<u64>,
    pub dead_letter_retention: Duration,
    pub max_event_size: usize,
    pub shutdown_grace: Duration,
    /// The Kafka engine's options, when events live in Kafka.
    pub kafka: Option<broker::KafkaOptions>,
    pub gateway_listen: SocketAddr,
    pub serving_domain: String,
    pub revision_history: usize,
    pub pipelines_shell: String,
    pub pipelines_max_result_size: usize,
    pub pipelines_max_running_tasks: usize,
    /// The ingress's connection bounds.
    pub ingress_server: ingress::ServerLimits,
    /// The ingress's request bounds.
    pub ingress: ingress::IngressConfig,
    /// The global autoscaler settings (the file's `autoscaler:`).
    pub autoscaler: serving::autoscaler::Defaults,
    /// The OTLP/HTTP collector spans go to, if any.
    pub otlp_endpoint: Option<String>,
    /// The listeners' certificate chain and key (HTTPS), if any.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The listener of /metrics, /healthz and /readyz alone, if any.
    pub ops_listen: Option<SocketAddr>,
    pub auth: control::auth::AuthConfig,
    /// `--insecure-no-auth`.
    pub insecure_no_auth: bool,
    /// `--tls-ca`'s file.
    pub tls_ca: Option<PathBuf>,
    /// Ferry's own issuer, if given (else the API's URL, known once it listens).
    pub oidc_issuer: Option<String>,
    pub default_authorization_mode: control::kinds::event_policy::DefaultMode,
    /// The networks deliveries may reach.
    pub delivery_networks: dispatcher::outbound::Networks,
    /// `--secrets-dir`, if given (else `<data-dir>/secrets`).
    pub secrets_dir: Option<PathBuf>,
}

impl ServeArgs {
    /// Merges flags and env (already in `self`) over the file over the defaults.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut problems = Vec::new();
        let autoscaler = autoscaler_defaults(&file.autoscaler).unwrap_or_else(|p| {
            problems.extend(p);
            Default::default()
        });
        let kafka_security = kafka_security::Given {
            protocol: self
                .kafka_security_protocol
                .or(file.kafka_security_protocol),
            mechanism: self.kafka_sasl_mechanism.or(file.kafka_sasl_mechanism),
            username: self.kafka_sasl_username.or(file.kafka_sasl_username),
            password_file: self
                .kafka_sasl_password_file
                .or(file.kafka_sasl_password_file),
            ca_file: self.kafka_ca_file.or(file.kafka_ca_file),
            cert_file: self.kafka_cert_file.or(file.kafka_cert_file),
            key_file: self.kafka_key_file.or(file.kafka_key_file),
        };
        let kafka_security_given = kafka_security != kafka_security::Given::default();
        if kafka_security_given && self.kafka.is_none() && file.kafka.is_none() {
            problems.push(
                "kafka-security-protocol, kafka-sasl-*, kafka-*-file: used only with --kafka"
                    .to_string(),
            );
        }
        let config = ServeConfig {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "ferry-data".into()),
            ingress_listen: self
                .ingress_listen
                .or(file.ingress_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            api_listen: self
                .api_listen
                .or(file.api_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8081))),
            ingress_url: self.ingress_url.or(file.ingress_url),
            fsync: self.fsync.or(file.fsync).unwrap_or_default(),
            partitions: self.partitions.or(file.partitions).unwrap_or(4),
            retention: self
                .retention
                .or(file.retention)
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes: self.retention_bytes.or(file.retention_bytes),
            dead_letter_retention: self
                .dead_letter_retention
                .or(file.dead_letter_retention)
                .unwrap_or(Duration::from_secs(14 * 24 * 3600)),
            max_event_size: self
                .max_event_size
                .or(file.max_event_size)
                .unwrap_or(1024 * 1024),
            shutdown_grace: self
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(Duration::from_secs(30)),
            kafka: self
                .kafka
                .or(file.kafka)
                .map(|bootstrap| broker::KafkaOptions {
                    bootstrap,
                    replication_factor: self
                        .kafka_replication_factor
                        .or(file.kafka_replication_factor)
                        .unwrap_or(1),
                    max_batch_records: self
                        .kafka_max_batch_records
                        .or(file.kafka_max_batch_records),
                    fetch_wait: self.kafka_fetch_wait.or(file.kafka_fetch_wait),
                    produce_timeout: self.kafka_produce_timeout.or(file.kafka_produce_timeout),
                    min_insync_replicas: self
                        .kafka_min_insync_replicas
                        .or(file.kafka_min_insync_replicas),
                    security: kafka_security::resolve(kafka_security, &mut problems),
                }),
            gateway_listen: self
                .gateway_listen
                .or(file.gateway_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8082))),
            serving_domain: self
                .serving_domain
                .or(file.serving_domain)
                .unwrap_or_else(|| "localhost".into()),
            revision_history: self
                .revision_history
                .or(file.revision_history)
                .unwrap_or(20),
            pipelines_shell: self
                .pipelines_shell
                .or(file.pipelines_shell)
                .unwrap_or_else(|| "sh".into()),
            pipelines_max_result_size: self
                .pipelines_max_result_size
                .or(file.pipelines_max_result_size)
                .unwrap_or(1 << 20),
            pipelines_max_running_tasks: self
                .pipelines_max_running_tasks
                .or(file.pipelines_max_running_tasks)
                .unwrap_or_else(|| {
                    4 * std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                }),
            ingress_server: {
                let d = ingress::ServerLimits::default();
                ingress::ServerLimits {
                    max_connections: self
                        .ingress_max_connections
                        .or(file.ingress_max_connections)
                        .unwrap_or(d.max_connections),
                    header_timeout: self
                        .ingress_header_timeout
                        .or(file.ingress_header_timeout)
                        .unwrap_or(d.header_timeout),
                }
            },
            ingress: {
                let d = ingress::IngressConfig::default();
                ingress::IngressConfig {
                    max_in_flight: self
                        .ingress_max_in_flight
                        .or(file.ingress_max_in_flight)
                        .unwrap_or(d.max_in_flight),
                    max_buffered_bytes: self
                        .ingress_max_buffered_bytes
                        .or(file.ingress_max_buffered_bytes)
                        .unwrap_or(d.max_buffered_bytes),
                    body_timeout: self
                        .ingress_body_timeout
                        .or(file.ingress_body_timeout)
                        .unwrap_or(d.body_timeout),
                    ..d
                }
            },
            autoscaler,
            otlp_endpoint: self.otlp_endpoint.or(file.otlp_endpoint),
            tls: match (
                self.tls_cert.or(file.tls_cert),
                self.tls_key.or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                (Some(_), None) | (None, Some(_)) => {
                    problems.push("tls-cert and tls-key: give both, or neither".to_string());
                    None
                }
            },
            ops_listen: self.ops_listen.or(file.ops_listen),
            auth: control::auth::AuthConfig {
                mode: self.auth.or(file.auth).unwrap_or_default(),
                admin_token_file: self.admin_token_file.or(file.admin_token_file),
                jwt: control::auth::jwt::JwtConfig {
                    jwks: self.jwks.or(file.jwks),
                    issuer: self.jwt_issuer.or(file.jwt_issuer),
                    api_audience: self
                        .jwt_api_audience
                        .or(file.jwt_api_audience)
                        .unwrap_or_else(|| "ferry".into()),
                },
                // Known once the API listens (`--oidc-issuer` or its URL).
                issuer: String::new(),
            },
            insecure_no_auth: self.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            tls_ca: self.tls_ca.or(file.tls_ca),
            secrets_dir: self.secrets_dir.or(file.secrets_dir),
            oidc_issuer: self.oidc_issuer.or(file.oidc_issuer),
            default_authorization_mode: self
                .default_authorization_mode
                .or(file.default_authorization_mode)
                .unwrap_or_default(),
            delivery_networks: dispatcher::outbound::Networks {
                allow: Some(self.delivery_allow_cidr)
                    .filter(|l| !l.is_empty())
                    .or(file.delivery_allow_cidr)
                    .unwrap_or_default(),
                deny: Some(self.delivery_deny_cidr)
                    .filter(|l| !l.is_empty())
                    .or(file.delivery_deny_cidr)
                    .unwrap_or_else(dispatcher::outbound::default_deny),
            },
        };
        config.validate(problems)?;
        Ok(config)
    }
}

/// The file's `autoscaler:` map over Knative's defaults; every bad key named.
fn autoscaler_defaults(
    map: &BTreeMap<String, serde_yaml_ng::Value>,
) -> Result<serving::autoscaler::Defaults, Vec<String>> {
    use serde_yaml_ng::Value;
    let text: BTreeMap<String, String> = map
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => format!("{other:?}"),
            };
            (k.clone(), s)
        })
        .collect();
    serving::autoscaler::Defaults::from_config(&text).map_err(|errors| {
        errors
            .into_iter()
            .map(|e| format!("autoscaler.{}: {}", e.key, e.message))
            .collect()
    })
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    serde_yaml_ng::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.yaml");
        std::fs::write(&path, "partitions: 8\nretention: 12h\nfsync: never\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            partitions: Some(2),
            ..ServeArgs::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.partitions, 2);
        assert_eq!(c.retention, Duration::from_secs(12 * 3600));
        assert_eq!(c.fsync, FsyncMode::Never);
        assert_eq!(c.max_event_size, 1024 * 1024);
    }

    #[test]
    fn kafka_options_come_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.yaml");
        std::fs::write(
            &path,
            "kafka: k1:9092\nkafka-fetch-wait: 10ms\nkafka-max-batch-records: 1\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            kafka_replication_factor: Some(3),
            ..ServeArgs::default()
        };
        let k = args.resolve().unwrap().kafka.unwrap();
        assert_eq!(k.bootstrap, "k1:9092");
        assert_eq!(k.fetch_wait, Some(Duration::from_millis(10)));
        assert_eq!(k.max_batch_records, Some(1));
        assert_eq!(k.replication_factor, 3);
    }

    #[test]
    fn bad_file_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.yaml");
        std::fs::write(&path, "partitons: 8\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ferry.yaml") && msg.contains("partitons"),
            "{msg}"
        );
        let err = ServeArgs {
            partitions: Some(0),
            max_event_size: Some(0),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("partitions") && err.contains("max-event-size"),
            "{err}"
        );
    }
}
