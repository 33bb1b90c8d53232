//! The `garret` client: Attic-compatible CLI for logging in, managing caches, pointing Nix
//! at a cache and pushing store paths. Pure pieces ([`cache_ref`], [`nix_conf`]) are kept
//! apart from the ones that talk to the network ([`http`]) or to local Nix ([`local_nix`]).

pub mod cache_ref;
pub mod commands;
pub mod config;
pub mod http;
pub mod local_nix;
pub mod nix_conf;
pub mod progress;
pub mod push;
pub mod tls;

pub use commands::{run, Cli};
