//! Per-text membership scores, every one oriented so that **higher ⇒ more likely member**.
//! Implements docs/audit.md, Scores (Min-K% Prob, Min-K%++, loss, zlib, lowercase and
//! reference-model scores, each with its canonical sign), mirroring the Python reference.
//!
//! What this module owns: the arithmetic from one text's cached per-token log-probabilities
//! (`lp[t−1] = log p(x_t | x_<t)`, the n−1 values of docs/audit.md, Token log-probabilities, natural log, f64) to its scores, the
//! Min-K% `k` rule (`k = floor((n as f64) * ratio)`, Python's `int(n*ratio)`), and a CPU
//! f64 reference for the per-position statistics Min-K%++ needs ([`from_logits`]).
//! What it does not own: tokenization, the forward pass, truncation and `token_mask` (filter
//! `lp`, `mu` and `sigma2` to the scored positions before calling in), lower-casing the text
//! (use `str::to_lowercase`, which matches Python's `str.lower`) and the neighbourhood
//! attack (not implemented).
//!
//! NaN rules (docs/audit.md, Scores): no scored token (n ≤ 1, "too_short") makes every score NaN; k = 0
//! makes that Min-K% / Min-K%++ score NaN. NaNs are kept here and dropped, with a count, by
//! [`crate::stats::metrics`]. [`TextScores`] records why a text's scores are NaN.

use flate2::{Compress, Compression, FlushCompress, Status};

/// The headline Min-K% / Min-K%++ ratio (20 %, as Shi et al.).
pub const DEFAULT_RATIO: f64 = 0.2;

/// The ratios reported: 10%, 20% (headline) and 50%.
pub const REPORTED_RATIOS: [f64; 3] = [0.1, 0.2, 0.5];

/// The zlib level: CPython's `zlib.compress` default (−1, which zlib maps to 6).
pub const ZLIB_LEVEL: u32 = 6;

/// Variance at or below which a position's distribution counts as one-hot and its Min-K%++
/// z-score is set to 0 (our choice).
pub const DEGENERATE_VARIANCE: f64 = 1e-30;

/// A rejected score argument; each variant names the argument and carries its value.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A Min-K% ratio must lie in (0, 1].
    #[error("Min-K% ratio must be in (0, 1], got {ratio}")]
    Ratio {
        /// The rejected ratio.
        ratio: f64,
    },
    /// A per-position slice does not have one value per scored token.
    #[error("{what} has {got} values, expected {expected} (one per scored token)")]
    LengthMismatch {
        /// Which input: `"mu"`, `"sigma2"`.
        what: &'static str,
        /// The number of scored token log-probs.
        expected: usize,
        /// The number of values passed.
        got: usize,
    },
    /// The flat logits slice is not `tokens × vocab`.
    #[error("logits hold {len} values, expected {tokens} tokens × vocab {vocab}")]
    LogitsShape {
        /// `logits.len()`.
        len: usize,
        /// The number of token ids.
        tokens: usize,
        /// The row width V.
        vocab: usize,
    },
    /// A token id is not a column of the logits.
    #[error("token id {id} at position {position} is outside the logits width {vocab}")]
    TokenOutOfRange {
        /// Position in `ids`.
        position: usize,
        /// The id.
        id: u32,
        /// The row width V.
        vocab: usize,
    },
    /// zlib refused to compress (should not happen for in-memory input).
    #[error("zlib compression failed")]
    Zlib {
        /// The backend's error.
        #[source]
        source: flate2::CompressError,
    },
}

/// The number of lowest values Min-K% averages: `floor((n as f64) * ratio)`, an IEEE double
/// multiply then truncation, exactly Python's `int(n*ratio)` (for n = 90, ratio 0.7 it is
/// 62, not the exact-rational 63).
pub fn k_count(n: usize, ratio: f64) -> Result<usize, ScoreError> {
    check_ratio(ratio)?;
    // n·ratio ∈ [0, n], so the truncating cast cannot saturate.
    Ok(((n as f64) * ratio).floor() as usize)
}

fn check_ratio(ratio: f64) -> Result<(), ScoreError> {
    if ratio > 0.0 && ratio <= 1.0 {
        Ok(())
    } else {
        Err(ScoreError::Ratio { ratio })
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// The HF causal-LM loss `−mean(lp)` in nats; NaN when no token is scored.
/// This is the raw loss, not a score: the loss score is [`score_loss`].
pub fn loss(lp: &[f64]) -> f64 {
    -mean(lp)
}

/// Loss attack (Yeom et al. 2018, arXiv 1709.01604): `−loss(x)`.
pub fn score_loss(lp: &[f64]) -> f64 {
    -loss(lp)
}

/// Min-K% Prob (Shi et al., ICLR 2024, arXiv 2310.16789): the mean of the
/// `k = k_count(lp.len(), ratio)` lowest values of `lp`; NaN when k = 0 (reference
/// `np.mean([])`). Applied to Min-K%++ z-scores ([`z_scores`]) it is Min-K%++.
pub fn min_k(lp: &[f64], ratio: f64) -> Result<f64, ScoreError> {
    let k = k_count(lp.len(), ratio)?;
    if k == 0 {
        return Ok(f64::NAN);
    }
    let mut sorted = lp.to_vec();
    sorted.sort_by(f64::total_cmp);
    Ok(mean(&sorted[..k]))
}

/// Per-token Min-K%++ z-scores with the count of degenerate positions.
#[derive(Debug, Clone, PartialEq)]
pub struct ZScores {
    /// `z_t = (lp[t−1] − mu_t) / sqrt(sigma2_t)`, one per scored token.
    pub z: Vec<f64>,
    /// Positions with `sigma2 ≤ DEGENERATE_VARIANCE`, whose z was set to 0 (our choice).
    pub degenerate: usize,
}

/// Min-K%++ z-scores (Zhang et al., ICLR 2025, arXiv 2404.02936):
/// `z_t = (lp[t−1] − mu_t) / sqrt(sigma2_t)`, where `mu_t` is the mean and `sigma2_t` the
/// variance (σ², not σ) of `log p(z)` for `z` drawn from the model's own next-token
/// distribution at that position (see [`position_stats`]). A one-hot position
/// (`sigma2 ≤ 1e-30`) gets z = 0 and is counted.
pub fn z_scores(lp: &[f64], mu: &[f64], sigma2: &[f64]) -> Result<ZScores, ScoreError> {
    check_len("mu", lp.len(), mu.len())?;
    check_len("sigma2", lp.len(), sigma2.len())?;
    let mut degenerate = 0;
    let z = lp
        .iter()
        .zip(mu)
        .zip(sigma2)
        .map(|((&l, &m), &s2)| {
            if s2 <= DEGENERATE_VARIANCE {
                degenerate += 1;
                0.0
            } else {
                (l - m) / s2.sqrt()
            }
        })
        .collect();
    Ok(ZScores { z, degenerate })
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), ScoreError> {
    if expected == got {
        Ok(())
    } else {
        Err(ScoreError::LengthMismatch { what, expected, got })
    }
}

/// Min-K%++: [`min_k`] over the [`z_scores`].
pub fn min_k_pp(lp: &[f64], mu: &[f64], sigma2: &[f64], ratio: f64) -> Result<f64, ScoreError> {
    min_k(&z_scores(lp, mu, sigma2)?.z, ratio)
}

/// `len(zlib.compress(text.encode("utf-8")))`: level 6, zlib wrapper (2-byte header, Adler-32
/// trailer, so `zlib_len("") == 8`), window 15, memLevel 8, default strategy, one
/// `deflate(Z_FINISH)` call as CPython does. Real zlib is required: flate2 must be built with
/// its `zlib` feature (libz-sys); its default miniz_oxide backend gives other lengths.
pub fn zlib_len(text: &str) -> Result<usize, ScoreError> {
    let input = text.as_bytes();
    let mut compressor = Compress::new(Compression::new(ZLIB_LEVEL), true);
    // zlib's deflateBound is len + len/4096 + len/16384 + 19 for these settings; this covers it.
    let mut out = Vec::with_capacity(input.len() + input.len() / 64 + 64);
    let mut consumed = 0;
    loop {
        let before = compressor.total_in();
        let status = compressor
            .compress_vec(&input[consumed..], &mut out, FlushCompress::Finish)
            .map_err(|source| ScoreError::Zlib { source })?;
        // total_in grows by at most input.len(), so the difference fits a usize.
        consumed += (compressor.total_in() - before) as usize;
        match status {
            Status::StreamEnd => return Ok(out.len()),
            Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
        }
    }
}

/// zlib ratio attack (Carlini et al., USENIX Security 2021, arXiv 2012.07805): `−loss(x) / Z(x)` with
/// `Z` = [`zlib_len`] of the text's UTF-8 bytes.
pub fn score_zlib(lp: &[f64], text: &str) -> Result<f64, ScoreError> {
    Ok(score_loss(lp) / zlib_len(text)? as f64)
}

/// Lowercase ratio attack (Carlini et al. 2021): `loss(lower(x)) / loss(x)`, with
/// `lp_lower` the same target model's log-probs on `text.to_lowercase()` (own tokenization).
pub fn score_lowercase(lp_lower: &[f64], lp: &[f64]) -> f64 {
    loss(lp_lower) / loss(lp)
}

/// Reference-model attack (Carlini et al. 2021; Mireshghallah et al. 2022, arXiv 2203.03929):
/// `loss_ref(x) − loss(x)`, where `lp_base` are the base (pre-fine-tuning) model's log-probs,
/// computed with the base model's own tokenizer. The primary fine-tuning attack (docs/audit.md, Scores).
pub fn score_ref(lp: &[f64], lp_base: &[f64]) -> f64 {
    loss(lp_base) - loss(lp)
}

/// Natural-log softmax of one logits row, `x − logsumexp(x)` with the max shifted out (as
/// scipy's `logsumexp`). Uses every column, padded vocabulary included.
pub fn log_softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        // All −inf (or +inf/NaN present): logsumexp is not finite, as in scipy.
        return vec![f64::NAN; row.len()];
    }
    let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x - lse).collect()
}

/// Mean and variance of `log p(z)` for `z ~ p` at one position (Min-K%++).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionStats {
    /// `Σ_v p_v ℓ_v` (= −entropy).
    pub mu: f64,
    /// `Σ_v p_v ℓ_v² − mu²`, the one-pass form of the reference, not clamped.
    pub sigma2: f64,
}

/// [`PositionStats`] of one log-softmax row ℓ, with `p = exp(ℓ)`; a `p` that underflows to 0
/// contributes 0 (so a −inf logit does not turn the sums into NaN).
pub fn position_stats(log_softmax_row: &[f64]) -> PositionStats {
    let (mut mu, mut second) = (0.0, 0.0);
    for &l in log_softmax_row {
        let p = l.exp();
        if p == 0.0 {
            continue;
        }
        mu += p * l;
        second += p * l * l;
    }
    PositionStats { mu, sigma2: second - mu * mu }
}

/// What one forward pass gives the scores: per scored token, its log-prob and the moments of
/// its position.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenStats {
    /// `lp[t−1] = log p(ids[t] | ids[..t])`, t = 1..n−1.
    pub logprobs: Vec<f64>,
    /// [`PositionStats::mu`] per scored token.
    pub mu: Vec<f64>,
    /// [`PositionStats::sigma2`] per scored token.
    pub sigma2: Vec<f64>,
}

/// The CPU f64 reference of the token log-probabilities and Min-K%++ statistics (`token_logprobs` plus `min_k_pp_tokens` of the
/// reference): `logits` is the row-major (n, V) output of one forward pass over `ids` (n
/// tokens); row t−1 scores `ids[t]`. n ≤ 1 gives empty vectors ("too_short").
pub fn from_logits(logits: &[f64], vocab: usize, ids: &[u32]) -> Result<TokenStats, ScoreError> {
    if vocab == 0 || Some(logits.len()) != ids.len().checked_mul(vocab) {
        return Err(ScoreError::LogitsShape { len: logits.len(), tokens: ids.len(), vocab });
    }
    let mut stats = TokenStats::default();
    for (t, &id) in ids.iter().enumerate().skip(1) {
        let column = id as usize;
        if column >= vocab {
            return Err(ScoreError::TokenOutOfRange { position: t, id, vocab });
        }
        let row = log_softmax(&logits[(t - 1) * vocab..t * vocab]);
        let moments = position_stats(&row);
        stats.logprobs.push(row[column]);
        stats.mu.push(moments.mu);
        stats.sigma2.push(moments.sigma2);
    }
    Ok(stats)
}

/// One text's cached inputs. Every slice holds one value per scored token of its own
/// tokenization; the optional parts switch the corresponding scores on.
#[derive(Debug, Clone, Copy)]
pub struct TextInput<'a> {
    /// Target model log-probs.
    pub logprobs: &'a [f64],
    /// `(mu, sigma2)` per scored token, for Min-K%++.
    pub moments: Option<(&'a [f64], &'a [f64])>,
    /// The text, for the zlib score.
    pub text: Option<&'a str>,
    /// Target model log-probs of the lower-cased text, for the lowercase score.
    pub lowercase_logprobs: Option<&'a [f64]>,
    /// Base (pre-fine-tuning) model log-probs, for the ref score.
    pub base_logprobs: Option<&'a [f64]>,
}

/// A Min-K% or Min-K%++ score at one ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RatioScore {
    /// The ratio asked for.
    pub ratio: f64,
    /// `k_count(n, ratio)`; 0 means `score` is NaN.
    pub k: usize,
    /// The score (higher ⇒ member).
    pub score: f64,
}

/// Why some of a text's scores are NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NanReason {
    /// No scored token (n ≤ 1): every score is NaN ("too_short").
    TooShort,
    /// At least one Min-K% / Min-K%++ ratio has k = 0.
    KZero,
}

/// Every score of one text (canonical signs only).
#[derive(Debug, Clone, PartialEq)]
pub struct TextScores {
    /// n − 1, the number of scored tokens.
    pub n_scored: usize,
    /// The raw loss in nats (not a score).
    pub loss: f64,
    /// [`score_loss`].
    pub score_loss: f64,
    /// [`zlib_len`] when the text was given.
    pub zlib_len: Option<usize>,
    /// [`score_zlib`] when the text was given.
    pub score_zlib: Option<f64>,
    /// [`score_lowercase`] when the lower-cased log-probs were given.
    pub score_lowercase: Option<f64>,
    /// [`score_ref`] when the base log-probs were given.
    pub score_ref: Option<f64>,
    /// Min-K% at each requested ratio, in order.
    pub min_k: Vec<RatioScore>,
    /// Min-K%++ at each requested ratio, in order; empty without moments.
    pub min_k_pp: Vec<RatioScore>,
    /// One-hot positions whose z was set to 0, for the diagnostics.
    pub degenerate_positions: usize,
    /// Why some scores are NaN (too short wins over k = 0); `None` when neither applies.
    pub nan_reason: Option<NanReason>,
}

impl TextScores {
    /// Computes every score `input` allows, Min-K% and Min-K%++ at each of `ratios`
    /// (e.g. [`REPORTED_RATIOS`]).
    pub fn compute(input: &TextInput<'_>, ratios: &[f64]) -> Result<Self, ScoreError> {
        let lp = input.logprobs;
        let n_scored = lp.len();
        let ratio_scores = |values: &[f64]| -> Result<Vec<RatioScore>, ScoreError> {
            ratios
                .iter()
                .map(|&ratio| Ok(RatioScore { ratio, k: k_count(values.len(), ratio)?, score: min_k(values, ratio)? }))
                .collect()
        };
        let min_k = ratio_scores(lp)?;
        let (min_k_pp, degenerate_positions) = match input.moments {
            Some((mu, sigma2)) => {
                let z = z_scores(lp, mu, sigma2)?;
                (ratio_scores(&z.z)?, z.degenerate)
            }
            None => (Vec::new(), 0),
        };
        let zlib_len = input.text.map(zlib_len).transpose()?;
        let nan_reason = if n_scored == 0 {
            Some(NanReason::TooShort)
        } else if min_k.iter().chain(&min_k_pp).any(|s| s.k == 0) {
            Some(NanReason::KZero)
        } else {
            None
        };
        Ok(Self {
            n_scored,
            loss: loss(lp),
            score_loss: score_loss(lp),
            zlib_len,
            score_zlib: zlib_len.map(|z| score_loss(lp) / z as f64),
            score_lowercase: input.lowercase_logprobs.map(|lower| score_lowercase(lower, lp)),
            score_ref: input.base_logprobs.map(|base| score_ref(lp, base)),
            min_k,
            min_k_pp,
            degenerate_positions,
            nan_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::stats::testutil::{f, fs, reference_rows, u, vectors};
    use super::*;

    /// Equal within `tol`, a NaN in `want` (the reference's k = 0) requiring NaN.
    fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
        if want.is_nan() {
            assert!(got.is_nan(), "{what}: want NaN, got {got}");
        } else {
            assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
        }
    }

    #[test]
    fn k_count_is_the_float_multiply_then_truncate() {
        assert_eq!(k_count(90, 0.7).unwrap(), 62); // exact rational would be 63
        assert_eq!(k_count(10, 0.2).unwrap(), 2);
        assert_eq!(k_count(19, 0.05).unwrap(), 0); // NaN at 5% for 19 tokens
        assert_eq!(k_count(8, 0.1).unwrap(), 0);
        assert_eq!(k_count(8, 1.0).unwrap(), 8);
        assert_eq!(k_count(0, 0.2).unwrap(), 0);
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(matches!(k_count(10, bad), Err(ScoreError::Ratio { .. })));
        }
        // Every n up to 1000 at the repo grids agrees with f64 arithmetic, not exact rationals.
        for n in 0..1000usize {
            for (num, den) in [(7u64, 10u64), (3, 10), (1, 10), (6, 10)] {
                let ratio = num as f64 / den as f64;
                assert_eq!(k_count(n, ratio).unwrap(), ((n as f64) * ratio) as usize);
            }
        }
    }

    #[test]
    fn scores_fixture_from_synthetic_logits() {
        let v = vectors();
        let fx = &v["scores_fixture"];
        let vocab = u(&fx["V"]) as usize;
        let logits: Vec<f64> = fx["logits"].as_array().unwrap().iter().flat_map(fs).collect();
        let ids: Vec<u32> = fx["ids"].as_array().unwrap().iter().map(|x| u(x) as u32).collect();
        let stats = from_logits(&logits, vocab, &ids).unwrap();

        // Same f64 arithmetic as the reference, up to summation order: far inside the 1e-4 tolerance.
        let want_lp = fs(&fx["token_logprobs"]);
        assert_eq!(stats.logprobs.len(), ids.len() - 1);
        for (g, w) in stats.logprobs.iter().zip(&want_lp) {
            assert!((g - w).abs() <= 1e-12, "lp {g} vs {w}");
        }
        assert_close(loss(&stats.logprobs), f(&fx["loss"]), 1e-12, "loss");

        let z = z_scores(&stats.logprobs, &stats.mu, &stats.sigma2).unwrap();
        assert_eq!(z.degenerate, 0);
        for (g, w) in z.z.iter().zip(fs(&fx["min_k_pp_tokens"])) {
            assert!((g - w).abs() <= 1e-10, "z {g} vs {w}");
        }
        for ratio in ["0.05", "0.1", "0.2", "0.5", "1.0"] {
            let r: f64 = ratio.parse().unwrap();
            // NaN at 5% and 10% (8 scored tokens ⇒ k = 0) is part of the check.
            assert_close(min_k(&stats.logprobs, r).unwrap(), f(&fx[format!("min_k_{ratio}")]), 1e-12, ratio);
            let pp = min_k_pp(&stats.logprobs, &stats.mu, &stats.sigma2, r).unwrap();
            assert_close(pp, f(&fx[format!("min_k_pp_{ratio}")]), 1e-10, ratio);
        }
        // Metamorphic: Min-K at ratio 1.0 equals −loss.
        assert!((min_k(&stats.logprobs, 1.0).unwrap() - score_loss(&stats.logprobs)).abs() < 1e-12);
    }

    #[test]
    fn zlib_lengths_match_cpython_zlib() {
        let v = vectors();
        let z = &v["zlib"];
        assert_eq!(zlib_len(z["text"].as_str().unwrap()).unwrap() as u64, u(&z["zlib_len"]));
        assert_eq!(zlib_len("").unwrap() as u64, u(&z["empty_len"]));
        assert_eq!(zlib_len("Zürich — 東京 😀").unwrap() as u64, u(&z["unicode_len"]));
        // CPython gives the same numbers; miniz_oxide would give 60 for the first.
        assert_eq!(zlib_len(&"The quick brown fox jumps over the lazy dog. ".repeat(3)).unwrap(), 55);
        assert_eq!(zlib_len("").unwrap(), 8);
        // Large input exercises the output-growth path.
        let big: String =
            (0..200_000u32).map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26)).collect();
        assert!(zlib_len(&big).unwrap() > 1000);
    }

    #[test]
    fn too_short_and_k_zero_are_nan_with_reasons() {
        let empty = TextScores::compute(
            &TextInput {
                logprobs: &[],
                moments: Some((&[], &[])),
                text: Some(""),
                lowercase_logprobs: Some(&[]),
                base_logprobs: Some(&[]),
            },
            &REPORTED_RATIOS,
        )
        .unwrap();
        assert_eq!(empty.nan_reason, Some(NanReason::TooShort));
        assert!(empty.loss.is_nan() && empty.score_loss.is_nan());
        assert!(empty.score_zlib.unwrap().is_nan());
        assert!(empty.score_lowercase.unwrap().is_nan() && empty.score_ref.unwrap().is_nan());
        assert!(empty.min_k.iter().chain(&empty.min_k_pp).all(|s| s.k == 0 && s.score.is_nan()));

        let lp = [-1.0, -2.0, -3.0, -4.0, -5.0];
        let short = TextScores::compute(
            &TextInput { logprobs: &lp, moments: None, text: None, lowercase_logprobs: None, base_logprobs: None },
            &REPORTED_RATIOS,
        )
        .unwrap();
        assert_eq!(short.nan_reason, Some(NanReason::KZero)); // 5 × 0.1 ⇒ k = 0
        assert!(short.min_k[0].score.is_nan());
        assert_eq!((short.min_k[1].k, short.min_k[1].score), (1, -5.0));
        assert_eq!((short.min_k[2].k, short.min_k[2].score), (2, -4.5));
        assert!(short.min_k_pp.is_empty() && short.score_zlib.is_none());
    }

    #[test]
    fn degenerate_positions_get_zero_and_are_counted() {
        let lp = [0.0, -1.0];
        let z = z_scores(&lp, &[0.0, -2.0], &[0.0, 4.0]).unwrap();
        assert_eq!(z.z, vec![0.0, 0.5]);
        assert_eq!(z.degenerate, 1);
        assert!(matches!(
            z_scores(&lp, &[0.0], &[1.0, 1.0]),
            Err(ScoreError::LengthMismatch { what: "mu", expected: 2, got: 1 })
        ));
        // A one-hot row: −inf logits contribute p = 0, not NaN.
        let row = log_softmax(&[0.0, f64::NEG_INFINITY, f64::NEG_INFINITY]);
        assert_eq!(position_stats(&row), PositionStats { mu: 0.0, sigma2: 0.0 });
    }

    #[test]
    fn from_logits_rejects_bad_shapes_and_ids() {
        assert!(matches!(from_logits(&[0.0; 5], 2, &[0, 1, 1]), Err(ScoreError::LogitsShape { .. })));
        assert!(matches!(from_logits(&[], 0, &[]), Err(ScoreError::LogitsShape { .. })));
        assert!(matches!(
            from_logits(&[0.0; 4], 2, &[0, 2]),
            Err(ScoreError::TokenOutOfRange { position: 1, id: 2, vocab: 2 })
        ));
        let one = from_logits(&[0.5, 0.1], 2, &[1]).unwrap();
        assert!(one.logprobs.is_empty()); // n = 1: too short, nothing scored
    }

    #[test]
    fn signs_are_higher_means_member() {
        let member = [-0.5, -1.0, -0.2]; // lower loss under the target
        let base = [-2.0, -3.0, -2.5];
        assert!(score_loss(&member) > score_loss(&base));
        assert!(score_ref(&member, &base) > 0.0);
        assert_eq!(score_ref(&base, &base), 0.0); // identical target and base ⇒ ref = 0
        assert!(min_k(&member, 0.5).unwrap() > min_k(&base, 0.5).unwrap());
    }

    /// The HF fixture's `reference_scores.jsonl`: every column computable from the
    /// stored `token_logprobs`, `min_k_pp_tokens` and `input`.
    #[test]
    fn reference_scores_fixture_columns() {
        let rows = reference_rows();
        assert_eq!(rows.len(), 16);
        for row in &rows {
            let lp = fs(&row["token_logprobs"]);
            let z = fs(&row["min_k_pp_tokens"]);
            let text = row["input"].as_str().unwrap();
            assert_eq!(lp.len(), row["ids"].as_array().unwrap().len() - 1);
            assert_eq!(z.len(), lp.len());
            assert_close(loss(&lp), f(&row["loss"]), 1e-12, "loss");
            assert_close(loss(&lp), f(&row["hf_loss"]), 1e-5, "hf_loss");
            assert_close(score_loss(&lp), f(&row["score_loss"]), 1e-12, "score_loss");
            assert_eq!(zlib_len(text).unwrap() as u64, u(&row["zlib_len"]), "{text}");
            assert_close(score_zlib(&lp, text).unwrap(), f(&row["score_zlib"]), 1e-12, "score_zlib");
            for ratio in ["0.1", "0.2", "0.3", "0.5", "1.0"] {
                let r: f64 = ratio.parse().unwrap();
                assert_close(min_k(&lp, r).unwrap(), f(&row[format!("min_k_{ratio}")]), 1e-12, ratio);
                assert_close(min_k(&z, r).unwrap(), f(&row[format!("min_k_pp_{ratio}")]), 1e-12, ratio);
            }
        }
    }
}
