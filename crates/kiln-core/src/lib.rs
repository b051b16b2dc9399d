//! The plain-Rust side of a kiln job: the job spec validated from its proto
//! (every default filled in, every error naming its field path), tabular data
//! from CSV or inline rows, the train/validation split and feature scaling.
//! No burn here, so these tests run in seconds.

pub mod data;
pub mod error;
pub mod prepare;
pub mod scaler;
pub mod spec;

pub use error::FieldError;
