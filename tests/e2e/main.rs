//! End-to-end tests: a real `nats-server` per test (started by the testkit on a free loopback
//! port), services in-process or as child processes, and real gRPC calls. One test binary, so
//! the workspace links it once.

mod auth;
mod cli;
mod cluster;
mod consent;
mod crash;
mod disclosures;
mod dlq;
mod failstop;
mod fuzz;
mod ingest;
mod markers;
mod natsauth;
mod orders;
mod outbox;
mod python;
mod rebuild;
mod requests;
mod retention;
mod schedules;
mod tamper;
mod tenants;
mod tidy;
mod traces;
mod transient;
