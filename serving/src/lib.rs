//! Ferry's serving: Knative Services (Service → Configuration → immutable Revisions, Routes
//! with traffic splits) run as local processes that scale with load, down to zero and back.
//!
//! Work in progress (issue "Serving"): so far the pure core of the autoscaler, Knative's KPA,
//! which the revision supervisor and the gateway will drive through the broker:
//!
//! - [`autoscaler`]: `settings` (the `autoscaling.knative.dev/*` annotations over the global
//!   defaults, validated, and the per-instance target), `window` (per-second buckets averaged
//!   over the stable and panic windows), `decider` (the 2-second tick: desired instances,
//!   panic mode, scale-down rate and delay, excess burst capacity) and `bounds` (min, max and
//!   initial scale). Plain functions of data and a clock in milliseconds: no I/O, no tokio.

pub mod autoscaler;
