//! `oz`: submit and inspect runs, follow them, and run agents.
//!
//! Code map: [`client`] (typed REST client), [`commands`] (one module per
//! subcommand), [`output`] (tables, JSON, colour), [`runner`] (`oz agent
//! run`, the agent runner the worker starts in each workspace, with its
//! harnesses).
#![forbid(unsafe_code)]

pub mod client;
pub mod commands;
pub mod output;
pub mod runner;
