//! The client verbs. Each talks to a running server's control API (`--server`, env
//! `FERRY_SERVER`, default http://127.0.0.1:8081).
//!
//! - `client.rs`: the API client and its error messages; `config.rs`: the CLI's own
//!   configuration file (server, token, CA).
//! - `apply.rs`: reading YAML files/directories/stdin and applying them.
//! - `get.rs`: get, describe, delete, api-resources, and the table/YAML/JSON output.
//! - `send.rs`, `tail.rs`: producing and reading events.
//! - `dlq.rs`: a trigger's (or a source's) dead letters.
//! - `logs.rs`: a revision's or a run's output.
//! - `cancel.rs`: cancelling a PipelineRun or a TaskRun.
//! - `token.rs`: API tokens.

pub mod apply;
pub mod cancel;
pub mod client;
pub mod config;
pub mod dlq;
pub mod get;
pub mod logs;
pub mod runs;
pub mod send;
pub mod tail;
pub mod token;
