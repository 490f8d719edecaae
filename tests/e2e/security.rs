//! Security through the real binary (README, "Security"): tokens and roles, TLS, JWTs,
//! EventPolicies, outbound deliveries.

mod jwt;
mod outbound;
mod policy;
pub mod support;
mod tls;
mod tokens;
