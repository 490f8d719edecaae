//! Ferry's dispatcher: triggers filter a broker's events and deliver them to subscribers.
//!
//! - [`cesql`]: CloudEvents SQL, compiled once per trigger, evaluated per event.

pub mod cesql;
