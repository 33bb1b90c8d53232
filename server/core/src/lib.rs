//! What every Garret program shares, and nothing else: Nix's formats ([`nix`]), Attic's
//! tokens ([`token`]), cache names, one duration grammar, one clock and the JSON bodies of
//! Attic's API ([`wire`]).
//!
//! Guarantees: no I/O besides reading the system clock ([`clock`]) and the OS random source
//! (key generation), no async runtime, no HTTP or database crate. The operator depends on this
//! crate alone, so it never compiles the server.

pub mod cache_name;
pub mod clock;
pub mod duration;
pub mod nix;
pub mod pins;
pub mod token;
pub mod upload_session;
pub mod upstream;
pub mod wire;
