//! `config8`: loads, validates and watches the orchestratorm8 configuration.
//!
//! It reads the Go original's `configs/configuration.yaml` unchanged (CONTRACT section
//! 1) into the plain-data [`Settings`], with Go-compatible defaults.
//!
//! Architecture invariant: depends only on `model8` among our crates; performs file I/O
//! only (no network). Secrets are held in [`Secret`] and never rendered.

pub mod duration;
mod secret;
mod settings;

pub use secret::Secret;
pub use settings::*;
