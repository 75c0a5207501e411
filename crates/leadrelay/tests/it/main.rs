//! Tests of the `leadrelay` executable itself: commands, exit codes, and crash safety.

mod cli;
mod crash;
mod delivery_crash;
mod demo;
mod disk_full;
mod multinode;
mod process;
mod server_lock;
