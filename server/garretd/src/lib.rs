//! garretd: the Attic-compatible Nix binary cache server.
//!
//! Layout: Nix's formats and Attic's tokens come from `garret_core`; [`store`] turns NAR
//! streams into deduplicated chunk packs on a [`backend`] (local disk or S3) with metadata in
//! [`db`]; [`gc`] reclaims what retention lets go; [`api`] is the HTTP surface; [`server`]
//! wires it all from [`config`] and [`declare`]d caches.

pub mod api;
pub mod backend;
pub mod config;
pub mod db;
pub mod declare;
pub mod error;
pub mod gc;
pub mod listener;
pub mod metrics;
pub mod oidc;
pub mod secrets;
pub mod server;
pub mod store;
pub mod upstream;
pub mod watch;
