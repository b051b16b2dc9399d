//! The plain-Rust side of a kiln job: the job spec validated from its proto
//! (every default filled in, every error naming its field path), tabular data
//! from CSV, inline rows or NumPy arrays with categorical columns one-hot
//! encoded, the train/validation split and feature scaling, and the
//! classification metrics of a set of predictions.
//! No burn here, so these tests run in seconds.

#![warn(missing_docs)]

pub mod budget;
pub mod data;
pub mod encoding;
pub mod error;
pub mod files;
pub mod metrics;
pub mod npy;
pub mod prepare;
pub mod scaler;
pub mod spec;

pub use error::{brief, FieldError};
