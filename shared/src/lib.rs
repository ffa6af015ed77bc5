//! The AI gateway: identity, plans and models, provider adapters, the store, and the HTTP handlers
//! that every Lambda function and the local server share line for line.

pub mod access;
pub mod admin;
pub mod api;
pub mod api_keys;
pub mod auth;
pub mod aws;
pub mod catalog;
pub mod chat;
pub mod clock;
pub mod config;
pub mod error;
pub mod ids;
pub mod jobs;
pub mod limits;
pub mod metered;
pub mod money;
pub mod providers;
pub mod queue;
pub mod resilience;
pub mod runtime_api;
pub mod secret;
pub mod secrets;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod usage;

pub use error::GatewayError;
pub use state::{AppState, Environment};
