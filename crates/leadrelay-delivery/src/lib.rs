//! Outbound delivery: the requests destinations receive, Standard Webhooks signatures,
//! success criteria, the retry policy, the SSRF guard every outbound call goes through, and
//! the service that claims due transfers and delivers them.

#![forbid(unsafe_code)]

pub mod attempt;
pub mod enhance;
pub mod guard;
pub mod judge;
pub mod plan;
mod pool;
pub mod request;
mod service;
pub mod signing;

pub use service::{lease_ms, CapReservation, DeliveryService, DeliverySettings, StepOutcome};
