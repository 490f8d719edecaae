//! Knative's KPA, as ../shared/specs/serving.md §1 describes it: what the gateway's statistics
//! mean for how many instances a revision should run.
//!
//! - `settings.rs`: global defaults and per-revision annotations → [`Scaling`].
//! - `window.rs`: [`Window`], per-second sums averaged as Knative's buckets do.
//! - `decider.rs`: [`Decider`], the 2 s tick (§1.4).
//! - `bounds.rs`: [`bounded`], min/max/initial scale on the decider's wish (§1.5).
//! - `zero.rs`: [`ZeroGate`], the last step to zero: a stable window active, then the grace.

mod bounds;
mod decider;
mod settings;
mod window;
mod zero;

pub use bounds::bounded;
pub use decider::{Decider, Tick, TICK};
pub use settings::{Aggregation, Defaults, Metric, Scaling, SettingError, PREFIX};
pub use window::Window;
pub use zero::ZeroGate;
