//! Integration tests: the real binary, run as a process against a fake
//! vault (a real HTTP server) and a fake `claude` (a real executable).

// Test code may panic on a broken fixture: that is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod agent_results;
mod alerts;
mod api_pressure;
mod auth_hub;
mod cli;
mod concurrency;
mod cron;
mod dir_vault;
mod fake_vault_selftest;
mod faults;
mod files;
mod fuzz;
mod hostile;
mod hostile_http;
mod once;
mod operations;
mod real_claude;
mod real_claude_probe;
mod secrets;
mod serve;
mod serve_harness;
mod several_runners;
