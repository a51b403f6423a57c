//! Token log-probabilities by one batched forward pass, as `research/audit.md` §1 defines them:
//! `lp[t-1] = log_softmax(logits[t-1])[x_t]` for t = 1..n-1 over all V columns (reported in
//! f64), plus the per-position mean and variance of log p under the model's own distribution
//! (Min-K%++, §2.2). Right padding with position ids from 0 per row keeps every text's numbers
//! independent of its batch-mates.

use crate::train::model::Model;
use tch::{Device, Kind, Tensor};

/// One text's per-token statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStats {
    /// Token ids (after truncation).
    pub ids: Vec<i64>,
    /// `log p(x_t | x_<t)`, t = 1..n-1.
    pub logprobs: Vec<f64>,
    /// `sum_v p_v log p_v` at each scored position.
    pub mu: Vec<f64>,
    /// `sum_v p_v (log p_v)^2 - mu^2` at each scored position.
    pub sigma2: Vec<f64>,
    /// The text was cut at `max_tokens`.
    pub truncated: bool,
}

/// Largest `rows * positions * vocab` evaluated in f64 at once (memory bound, ~512 MiB).
const MAX_F64_ELEMENTS: i64 = 1 << 26;

/// Scores token sequences with `model`, `batch` sequences per forward pass (fewer when the f64
/// log-softmax would not fit), truncating each to `max_tokens`.
pub fn token_stats(model: &Model, sequences: &[Vec<i64>], max_tokens: usize, batch: usize, device: Device) -> Vec<TokenStats> {
    let _guard = tch::no_grad_guard();
    let vocab = model.vocab_size();
    let mut out = Vec::with_capacity(sequences.len());
    let mut start = 0;
    while start < sequences.len() {
        let longest = sequences[start..].iter().take(batch.max(1)).map(|s| s.len().min(max_tokens)).max().unwrap_or(1).max(2) as i64;
        let fit = (MAX_F64_ELEMENTS / (longest * vocab)).max(1) as usize;
        let end = (start + batch.max(1).min(fit)).min(sequences.len());
        out.extend(score_batch(model, &sequences[start..end], max_tokens, device));
        start = end;
    }
    out
}

/// Right-pads `seqs` (each cut at `max_tokens`) into `[B, T]` ids, T >= 2; returns the kept lengths.
fn padded_ids(seqs: &[Vec<i64>], max_tokens: usize, device: Device) -> (Tensor, Vec<usize>) {
    let lens: Vec<usize> = seqs.iter().map(|s| s.len().min(max_tokens)).collect();
    let t = lens.iter().copied().max().unwrap_or(0).max(2);
    let mut flat = vec![0i64; seqs.len() * t];
    for (r, s) in seqs.iter().enumerate() {
        flat[r * t..r * t + lens[r]].copy_from_slice(&s[..lens[r]]);
    }
    (Tensor::from_slice(&flat).reshape([seqs.len() as i64, t as i64]).to_device(device), lens)
}

fn score_batch(model: &Model, seqs: &[Vec<i64>], max_tokens: usize, device: Device) -> Vec<TokenStats> {
    let (ids, lens) = padded_ids(seqs, max_tokens, device);
    let t = ids.size()[1] as usize;
    let logits = model.forward(&ids, None).narrow(1, 0, t as i64 - 1);
    // One exp pass over [B, T, V] in the model's f32 (libtorch's cascaded f32 sums):
    // y = x - max, e = exp(y), s = sum e; log p = y - ln s. Under p, log p is y shifted by a
    // constant, so mu = E[y] - ln s and sigma2 = Var(y) = E[(y - E y)^2] (two-pass, no
    // cancellation). Checked against the transformers reference to 1e-4 in the tests.
    let max = logits.amax(&[-1i64][..], true);
    let y = &logits - &max;
    let e = y.exp();
    let s = e.sum_dim_intlist(&[-1i64][..], true, Kind::Float);
    let ey = (&e * &y).sum_dim_intlist(&[-1i64][..], true, Kind::Float) / &s;
    let centred = &y - &ey;
    let sigma2 = ((&e * centred.square()).sum_dim_intlist(&[-1i64][..], true, Kind::Float) / &s).squeeze_dim(-1).to_kind(Kind::Double);
    let (s, ey) = (s.to_kind(Kind::Double), ey.to_kind(Kind::Double));
    let ln_s = s.log();
    let mu = (&ey - &ln_s).squeeze_dim(-1);
    let target = y.gather(2, &ids.narrow(1, 1, t as i64 - 1).unsqueeze(-1), false).to_kind(Kind::Double);
    let lp = (target - &ln_s).squeeze_dim(-1);
    let rows = |x: &Tensor| -> Vec<Vec<f64>> {
        let x = x.to_device(Device::Cpu);
        (0..seqs.len() as i64).map(|r| Vec::<f64>::try_from(&x.get(r)).unwrap_or_default()).collect()
    };
    let (lp, mu, sigma2) = (rows(&lp), rows(&mu), rows(&sigma2));
    seqs.iter()
        .enumerate()
        .map(|(r, s)| {
            let n = lens[r].saturating_sub(1);
            TokenStats {
                ids: s[..lens[r]].to_vec(),
                logprobs: lp[r][..n].to_vec(),
                mu: mu[r][..n].to_vec(),
                sigma2: sigma2[r][..n].to_vec(),
                truncated: s.len() > max_tokens,
            }
        })
        .collect()
}

/// Plain forward throughput reference for the benchmark: the same batches, logits only.
pub fn forward_only(model: &Model, sequences: &[Vec<i64>], max_tokens: usize, batch: usize, device: Device) -> f64 {
    let _guard = tch::no_grad_guard();
    let mut checksum = 0.0;
    for chunk in sequences.chunks(batch.max(1)) {
        let (ids, _) = padded_ids(chunk, max_tokens, device);
        checksum += model.forward(&ids, None).mean(Kind::Float).double_value(&[]);
    }
    checksum
}
