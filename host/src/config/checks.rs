//! The checks validation applies to single values, each returning the error that names the
//! key and says what would be valid.

use crate::error::{Error, Result};

/// Builds the error for a key: `invalid(key, message)`.
pub(super) type Invalid<'a> = &'a dyn Fn(&str, String) -> Error;

pub(super) fn at_least_one(invalid: Invalid<'_>, key: &str, value: usize) -> Result<usize> {
    if value == 0 {
        Err(invalid(key, "must be at least 1 (got 0)".into()))
    } else {
        Ok(value)
    }
}

pub(super) fn in_range(
    invalid: Invalid<'_>,
    key: &str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
    open_low: bool,
) -> Result<f64> {
    let above_low = if open_low {
        value > *range.start()
    } else {
        value >= *range.start()
    };
    if value.is_finite() && above_low && value <= *range.end() {
        Ok(value)
    } else {
        let low = if open_low { "(" } else { "[" };
        Err(invalid(
            key,
            format!(
                "must be in {low}{}, {}] (got {value})",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// A setting that only makes sense with another one.
pub(super) fn only_with<T>(
    invalid: Invalid<'_>,
    key: &str,
    value: Option<T>,
    applies: bool,
    why: &str,
) -> Result<Option<T>> {
    match value {
        Some(_) if !applies => Err(invalid(key, format!("is only used {why}; remove it"))),
        other => Ok(other),
    }
}
