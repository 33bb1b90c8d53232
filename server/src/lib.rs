//! Garret: an Attic-compatible Nix binary cache.
//!
//! Layout: [`nix`] (formats: nix32, NAR, narinfo, signatures) and [`token`] (JWTs) are pure;
//! [`store`] turns NAR streams into deduplicated chunks on a [`storage`] backend with
//! metadata in [`db`]; [`api`] is the HTTP surface; [`server`] wires it all from [`config`].

pub mod api;
pub mod cache_name;
pub mod client;
pub mod config;
pub mod db;
pub mod declare;
pub mod error;
pub mod gc;
pub mod metrics;
pub mod nix;
pub mod secrets;
pub mod server;
pub mod storage;
pub mod store;
pub mod token;
pub mod watch;
