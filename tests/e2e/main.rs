//! End-to-end tests: the real `ferry` binary, real RocksDB, real HTTP.

// Test harness code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod subscriber;
mod support;
#[path = "../../broker/tests/support/tansu.rs"]
mod tansu;

mod bad_subscribers;
mod cli;
mod crash;
mod dead_letters;
mod deploy;
mod hardening;
mod ingress;
mod kafka;
mod kafka_faults;
mod kafka_security;
mod nodes;
mod pipelines;
mod security;
mod serving;
mod sources;
mod system;
mod traces;
mod triggers;
