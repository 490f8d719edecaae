//! The CloudEvent as Ferry keeps it, and its encodings. Pure: no I/O, no HTTP server; every
//! other part of Ferry speaks it.
//!
//! - [`event`]: [`Event`], attributes exactly as received (names, string forms, JSON types of
//!   extensions, order) and data as the exact bytes.
//! - [`validate`](mod@validate): CloudEvents 1.0 validation and [`InvalidEvent`], the one
//!   error that says what is wrong with an event.
//! - [`json`]: the JSON format (structured mode) and its batch form, both ways.
//! - [`http`]: the HTTP binding: content mode, binary mode in and out (percent-encoding).
//! - [`kafka`]: the Kafka binding: binary-mode headers in and out, structured records.
//! - [`ext`]: the extension names and limits Ferry and Knative give meaning to.
//! - [`trace`]: the distributed-tracing extension (W3C `traceparent`) and spans.
//! - [`builder`]: [`EventBuilder`], for the events Ferry emits itself.
//!
//! Decoders check their encoding only; [`validate()`] checks the attributes, so a caller that
//! validates anyway (the publisher) does it once.

pub mod builder;
pub mod event;
pub mod ext;
pub mod http;
pub mod json;
pub mod kafka;
pub mod trace;
pub mod validate;

pub use builder::EventBuilder;
pub use event::{AttrValue, Event};
pub use validate::{is_json, validate, InvalidEvent};
