//! The capabilities a monitor reaches through [`Context::query`](crate::Context::query), and
//! the byte layouts of their inputs and answers.
//!
//! Each name below is a capability the host answers; [`Context`](crate::Context) has a typed
//! method for each one, built on the encoders and decoders here, and the host encodes its
//! answers with the same functions. A host that does not know a name answers an error that
//! lists the names it knows.
//!
//! | name | input | answer | typed method |
//! |---|---|---|---|
//! | [`VERSION`] | none | the host's version, UTF-8 | [`Context::host_version`](crate::Context::host_version) |
//! | [`ARTIFACT_DIR`] | none | the run's artifact directory, UTF-8 | [`Context::artifact_dir`](crate::Context::artifact_dir) |
//! | [`TRAIN_LABELS`], [`VAL_LABELS`] | none | [labels](encode_labels) | [`Context::train_labels`](crate::Context::train_labels), [`Context::val_labels`](crate::Context::val_labels) |
//! | [`PARAMETER_COUNT`] | none | [`ParameterCount`] | [`Context::parameter_count`](crate::Context::parameter_count) |
//! | [`GRADIENT_EMA_UPDATE`] | the [decay](encode_decay) | empty | [`Context::update_gradient_ema`](crate::Context::update_gradient_ema) |
//! | [`GRADIENT_EMA`] | none | [`GradientEma`] | [`Context::gradient_ema`](crate::Context::gradient_ema) |
//! | [`SAVE_STATE`] | the state | empty | (the SDK, at `SAVE_STATE`) |
//! | [`SAVED_STATE`] | none | [`SavedState`](crate::SavedState) | (the SDK, at `RESTORE_STATE`) |
//!
//! ```
//! use vigil_plugin_api::query::{decode_labels, encode_labels, ParameterCount};
//!
//! let bytes = encode_labels(&[3, 0, 9]);
//! assert_eq!(bytes.len(), 24);
//! assert_eq!(decode_labels(&bytes)?, vec![3, 0, 9]);
//!
//! let count = ParameterCount { total: 1_200, trainable: 1_000 };
//! assert_eq!(ParameterCount::decode(&count.encode())?, count);
//! # Ok::<(), vigil_plugin_api::Error>(())
//! ```

use crate::Error;

/// The host's version (`vigil --version`), as UTF-8.
pub const VERSION: &str = "vigil.version";
/// The directory the run's artifacts go to, as UTF-8. An error before training starts.
pub const ARTIFACT_DIR: &str = "vigil.artifact_dir";
/// The label of every training sample, in dataset order: see [`encode_labels`].
pub const TRAIN_LABELS: &str = "vigil.labels.train";
/// The label of every validation sample, in dataset order: see [`encode_labels`].
pub const VAL_LABELS: &str = "vigil.labels.val";
/// How many scalars the model holds: see [`ParameterCount`].
pub const PARAMETER_COUNT: &str = "vigil.parameter_count";
/// Fold this step's gradient into the monitor's moving averages, kept by the host on the
/// device (at `TRAIN_BATCH_END`; input: [`encode_decay`]). Once per step: a second call in
/// the same step changes nothing; a new decay starts the averages afresh.
pub const GRADIENT_EMA_UPDATE: &str = "vigil.gradient_ema.update";
/// The monitor's gradient averages so far: see [`GradientEma`]. An error before the first
/// [`GRADIENT_EMA_UPDATE`].
pub const GRADIENT_EMA: &str = "vigil.gradient_ema";
/// Hand the host the monitor's state (at `SAVE_STATE`); the SDK does this.
pub const SAVE_STATE: &str = crate::state::SAVE_QUERY;
/// What the monitor saved at the checkpoint a run resumes from (at `RESTORE_STATE`); the SDK
/// asks this.
pub const SAVED_STATE: &str = crate::state::SAVED_QUERY;

/// Every name this release defines.
pub const ALL: [&str; 9] = [
    VERSION,
    ARTIFACT_DIR,
    TRAIN_LABELS,
    VAL_LABELS,
    PARAMETER_COUNT,
    GRADIENT_EMA_UPDATE,
    GRADIENT_EMA,
    SAVE_STATE,
    SAVED_STATE,
];

fn malformed(query: &str, what: String) -> Error {
    Error::Host(format!("malformed `{query}` answer: {what}"))
}

/// Labels as consecutive little-endian `i64`s, 8 bytes each.
///
/// ```
/// assert_eq!(vigil_plugin_api::query::encode_labels(&[1]), [1, 0, 0, 0, 0, 0, 0, 0]);
/// ```
pub fn encode_labels(labels: &[i64]) -> Vec<u8> {
    labels
        .iter()
        .flat_map(|label| label.to_le_bytes())
        .collect()
}

/// Read what [`encode_labels`] wrote; an error when the length is not a multiple of 8.
///
/// ```
/// use vigil_plugin_api::query::decode_labels;
/// assert_eq!(decode_labels(&[2, 0, 0, 0, 0, 0, 0, 0])?, vec![2]);
/// assert!(decode_labels(&[2, 0, 0]).is_err());
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
pub fn decode_labels(answer: &[u8]) -> Result<Vec<i64>, Error> {
    if answer.len() % 8 != 0 {
        return Err(malformed(
            "vigil.labels.*",
            format!("{} bytes is not a whole number of i64 labels", answer.len()),
        ));
    }
    Ok(answer
        .chunks_exact(8)
        .map(|word| i64::from_le_bytes(word.try_into().expect("chunks of 8")))
        .collect())
}

/// The decay of [`GRADIENT_EMA_UPDATE`]: the 8 little-endian bytes of an `f64` in [0, 1).
///
/// ```
/// use vigil_plugin_api::query::{decode_decay, encode_decay};
/// assert_eq!(decode_decay(&encode_decay(0.9))?, 0.9);
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
pub fn encode_decay(beta: f64) -> [u8; 8] {
    beta.to_le_bytes()
}

/// Read what [`encode_decay`] wrote.
pub fn decode_decay(input: &[u8]) -> Result<f64, Error> {
    <[u8; 8]>::try_from(input)
        .map(f64::from_le_bytes)
        .map_err(|_| {
            Error::Host(format!(
                "{GRADIENT_EMA_UPDATE} takes the decay as 8 little-endian bytes of an f64; got {} bytes",
                input.len()
            ))
        })
}

/// A UTF-8 answer ([`VERSION`], [`ARTIFACT_DIR`]).
///
/// ```
/// assert_eq!(vigil_plugin_api::query::decode_text("vigil.version", b"0.9.0")?, "0.9.0");
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
pub fn decode_text(query: &str, answer: &[u8]) -> Result<String, Error> {
    String::from_utf8(answer.to_vec()).map_err(|_| malformed(query, "not UTF-8".into()))
}

/// How many scalars the model holds: the answer to [`PARAMETER_COUNT`].
///
/// Encoded as the JSON object `{"total":N,"trainable":M}` (what hosts have answered since 1.0).
///
/// ```
/// use vigil_plugin_api::query::ParameterCount;
/// let count = ParameterCount { total: 10, trainable: 8 };
/// assert_eq!(count.encode(), br#"{"total":10,"trainable":8}"#);
/// assert_eq!(ParameterCount::decode(br#"{ "trainable": 8, "total": 10 }"#)?, count);
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCount {
    /// Every scalar, buffers such as batch-norm statistics included.
    pub total: u64,
    /// The scalars the optimizer trains (the length of the flattened gradient).
    pub trainable: u64,
}

impl ParameterCount {
    /// The JSON object `{"total":N,"trainable":M}`.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{{\"total\":{},\"trainable\":{}}}",
            self.total, self.trainable
        )
        .into_bytes()
    }

    /// Read a flat JSON object with the unsigned integer members `total` and `trainable`, in
    /// any order (other members are ignored).
    pub fn decode(answer: &[u8]) -> Result<Self, Error> {
        let bad = |what: &str| malformed(PARAMETER_COUNT, what.to_string());
        let text = std::str::from_utf8(answer).map_err(|_| bad("not UTF-8"))?;
        let body = text
            .trim()
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
            .ok_or_else(|| bad("not a JSON object"))?;
        let (mut total, mut trainable) = (None, None);
        for member in body.split(',').filter(|m| !m.trim().is_empty()) {
            let (key, value) = member
                .split_once(':')
                .ok_or_else(|| bad("a member without `:`"))?;
            let value = value.trim();
            match key.trim().trim_matches('"') {
                "total" => total = value.parse().ok(),
                "trainable" => trainable = value.parse().ok(),
                _ => {}
            }
        }
        match (total, trainable) {
            (Some(total), Some(trainable)) => Ok(ParameterCount { total, trainable }),
            _ => Err(bad(&format!(
                "`total` and `trainable` must be unsigned integers in `{text}`"
            ))),
        }
    }
}

/// A monitor's exponential moving averages of the gradient `g`, kept by the host: the answer
/// to [`GRADIENT_EMA`]. Not bias-corrected; the correction is `1 − beta^updates`.
///
/// Encoded in 40 bytes: `updates` and `numel` as little-endian `u64`, then `beta`,
/// `mean_square` and `squared_mean` as little-endian `f64`.
///
/// ```
/// use vigil_plugin_api::query::GradientEma;
/// let averages = GradientEma { updates: 3, numel: 10, beta: 0.5, mean_square: 2.0, squared_mean: 1.5 };
/// let bytes = averages.encode();
/// assert_eq!(bytes.len(), 40);
/// assert_eq!(GradientEma::decode(&bytes)?, averages);
/// # Ok::<(), vigil_plugin_api::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientEma {
    /// Steps folded in since the averages started.
    pub updates: u64,
    /// Trainable scalars.
    pub numel: u64,
    /// The decay.
    pub beta: f64,
    /// EMA of `Σ g² / numel`.
    pub mean_square: f64,
    /// `Σ m² / numel` for `m` the EMA of `g`.
    pub squared_mean: f64,
}

impl GradientEma {
    /// The encoded length.
    pub const LEN: usize = 40;

    /// The 40-byte answer.
    pub fn encode(&self) -> Vec<u8> {
        [self.updates.to_le_bytes(), self.numel.to_le_bytes()]
            .into_iter()
            .chain([self.beta, self.mean_square, self.squared_mean].map(f64::to_le_bytes))
            .flatten()
            .collect()
    }

    /// Read what [`GradientEma::encode`] wrote.
    pub fn decode(answer: &[u8]) -> Result<Self, Error> {
        if answer.len() != Self::LEN {
            return Err(malformed(
                GRADIENT_EMA,
                format!("{} bytes, expected {}", answer.len(), Self::LEN),
            ));
        }
        let word = |index: usize| -> [u8; 8] {
            answer[index * 8..index * 8 + 8]
                .try_into()
                .expect("length checked")
        };
        Ok(GradientEma {
            updates: u64::from_le_bytes(word(0)),
            numel: u64::from_le_bytes(word(1)),
            beta: f64::from_le_bytes(word(2)),
            mean_square: f64::from_le_bytes(word(3)),
            squared_mean: f64::from_le_bytes(word(4)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_keep_what_hosts_have_always_answered() {
        // The exact bytes hosts 1.0–1.2 wrote, which plugins built then parse.
        let count = ParameterCount {
            total: 42,
            trainable: 40,
        };
        assert_eq!(count.encode(), br#"{"total":42,"trainable":40}"#.to_vec());
        for bad in [
            &b"[1]"[..],
            b"{\"total\":-1,\"trainable\":2}",
            b"{\"total\":1}",
        ] {
            assert!(ParameterCount::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_of_the_wrong_length_are_errors_that_name_the_query() {
        let err = GradientEma::decode(&[0; 39]).unwrap_err().to_string();
        assert!(
            err.contains("vigil.gradient_ema") && err.contains("39 bytes"),
            "{err}"
        );
        assert!(decode_decay(&[0; 4])
            .unwrap_err()
            .to_string()
            .contains("got 4 bytes"));
    }
}
