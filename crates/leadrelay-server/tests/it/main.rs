//! Integration tests of the HTTP API: a real server on 127.0.0.1, a real SQLite file per test.

mod auth;
mod browser;
mod caps;
mod config;
mod delivery;
mod events;
mod formats;
mod helpers;
mod intake;
mod pipeline;
mod realtime;
mod receiver;
mod resend;
mod web;
