//! The field checks every validator shares: each returns a [`FieldError`]
//! naming the field path it was given.

use crate::error::{FieldError, Result};

pub(super) fn unknown_enum(field: &str, value: i32) -> FieldError {
    FieldError::new(field, format!("unknown value {value}"))
}

/// `Err(field: message)` unless `ok`.
pub(super) fn ensure(ok: bool, field: &str, message: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(field, message))
    }
}

pub(super) fn beta(field: &str, value: Option<f64>, default: f64) -> Result<f64> {
    let v = value.unwrap_or(default);
    ensure((0.0..1.0).contains(&v), field, "must be in [0, 1)")?;
    Ok(v)
}

pub(super) fn positive(field: &str, value: Option<f64>, default: f64) -> Result<f64> {
    let v = value.unwrap_or(default);
    ensure(v > 0.0 && v.is_finite(), field, "must be > 0")?;
    Ok(v)
}

pub(super) fn non_negative(field: &str, v: f64) -> Result<f64> {
    ensure(v >= 0.0 && v.is_finite(), field, "must be >= 0")?;
    Ok(v)
}
