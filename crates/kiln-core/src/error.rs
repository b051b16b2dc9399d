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

/// The most characters of client input an error message repeats.
pub const MAX_ECHO_CHARS: usize = 100;

/// `input` as an error message may repeat it: at most [`MAX_ECHO_CHARS`]
/// characters, then "…" when there was more, so that a huge name or id sent
/// by a client never comes back whole.
pub fn brief(input: &str) -> std::borrow::Cow<'_, str> {
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        None => input.into(),
        Some((end, _)) => format!("{}…", &input[..end]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brief_keeps_short_input_and_cuts_long_input() {
        assert_eq!(brief("job-1"), "job-1");
        let long = "é".repeat(20_000);
        let cut = brief(&long);
        assert_eq!(cut.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
