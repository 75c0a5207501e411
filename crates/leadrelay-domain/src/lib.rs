//! The pure domain of leadrelay: identifiers, configuration objects, field types, the rule
//! engine, the pipeline's decisions and the event log's hash chain. No IO lives here.

#![forbid(unsafe_code)]

pub mod caps;
pub mod chain;
pub mod compiled;
pub mod config;
pub mod event;
pub mod fields;
pub mod ids;
pub mod lead;
pub mod pipeline;
pub mod rules;
pub mod time;
pub mod typed_rules;
