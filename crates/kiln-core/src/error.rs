//! The error every check returns: where it is, and what is wrong.

use std::fmt;

/// A user error that names where it is: a field path such as
/// `spec.training.batch_size`, or a data location such as `data row 7, column "x2"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where: a field path or a data location.
    pub field: String,
    /// What is wrong there.
    pub message: String,
}

impl FieldError {
    /// An error at `field` saying `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// A result whose error says where it is.
pub type Result<T, E = FieldError> = std::result::Result<T, E>;
