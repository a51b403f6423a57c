//! Token log-probabilities by one batched forward pass, as docs/audit.md, Token log-probabilities, defines them:
//! `lp[t-1] = log_softmax(logits[t-1])[x_t]` for t = 1..n-1 over all V columns (reported in
//! f64), plus the per-position mean and variance of log p under the model's own distribution
//! (Min-K%++, docs/audit.md, Scores). Right padding with position ids from 0 per row keeps every text's numbers
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

/// Scored positions per vocabulary-wide pass: `[rows, V]` f32 temporaries of a few MiB stay in
/// cache, where one pass over the whole `[B, T, V]` would stream it through memory several times.
const ROWS_PER_PASS: i64 = 16;

/// Largest `[B, T, V]` logits tensor a forward pass may produce (f32 elements, 1 GiB): fewer
/// sequences go into a pass when long texts or a large vocabulary would exceed it.
const MAX_LOGITS_ELEMENTS: i64 = 1 << 28;

/// Scores token sequences with `model`, up to `batch` sequences per forward pass (fewer when
/// their logits would exceed [`MAX_LOGITS_ELEMENTS`]), truncating each to `max_tokens`.
pub fn token_stats(model: &Model, sequences: &[Vec<i64>], max_tokens: usize, batch: usize, device: Device) -> Vec<TokenStats> {
    token_stats_counted(model, sequences, max_tokens, batch, device, &Scoring::silent())
}

/// How far an audit's scoring has got, for people waiting on it: every (sequence, model) pair
/// scored counts once, so a text scored under the fine-tuned model, in lowercase and under the
/// base model counts three times. `report(done, total)` is called after every batch.
pub struct Scoring<'a> {
    total: u64,
    done: std::cell::Cell<u64>,
    report: &'a dyn Fn(u64, u64),
}

impl<'a> Scoring<'a> {
    /// `total` scorings to come, each batch reported to `report`.
    pub fn new(total: u64, report: &'a dyn Fn(u64, u64)) -> Self {
        report(0, total);
        Scoring { total, done: std::cell::Cell::new(0), report }
    }

    /// Counts nothing anyone reads.
    pub fn silent() -> Scoring<'static> {
        Scoring { total: 0, done: std::cell::Cell::new(0), report: &|_, _| {} }
    }

    fn add(&self, n: usize) {
        self.done.set(self.done.get() + n as u64);
        (self.report)(self.done.get(), self.total.max(self.done.get()));
    }
}

/// [`token_stats`], counting each batch's sequences into `scoring`.
pub fn token_stats_counted(model: &Model, sequences: &[Vec<i64>], max_tokens: usize, batch: usize, device: Device, scoring: &Scoring<'_>) -> Vec<TokenStats> {
    let _guard = tch::no_grad_guard();
    let vocab = model.vocab_size().max(1);
    let mut out = Vec::with_capacity(sequences.len());
    let mut start = 0;
    while start < sequences.len() {
        let longest = sequences[start..].iter().take(batch.max(1)).map(|s| s.len().min(max_tokens)).max().unwrap_or(1).max(2) as i64;
        let fit = (MAX_LOGITS_ELEMENTS / (longest * vocab)).max(1) as usize;
        let end = (start + batch.max(1).min(fit)).min(sequences.len());
        out.extend(score_batch(model, &sequences[start..end], max_tokens, device));
        scoring.add(end - start);
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
    let logits = model.forward(&ids, None);
    seqs.iter()
        .enumerate()
        .map(|(r, s)| {
            let n = lens[r].saturating_sub(1) as i64;
            let row_logits = logits.get(r as i64);
            let next_ids = ids.get(r as i64);
            // Padding positions are never scored; each block of positions is [len, V]. The
            // results stay on the device until the row is done: one copy per row and statistic.
            let mut parts: [Vec<Tensor>; 3] = Default::default();
            let mut start = 0i64;
            while start < n {
                let len = ROWS_PER_PASS.min(n - start);
                let stats = position_stats(&row_logits.narrow(0, start, len), &next_ids.narrow(0, start + 1, len));
                for (part, t) in parts.iter_mut().zip(stats) {
                    part.push(t);
                }
                start += len;
            }
            let [logprobs, mu, sigma2] = parts.map(|p| {
                if p.is_empty() {
                    return Vec::new();
                }
                Vec::<f64>::try_from(&Tensor::cat(&p, 0).to_device(Device::Cpu).to_kind(Kind::Double)).expect("a 1-d f64 tensor converts")
            });
            TokenStats { ids: s[..lens[r]].to_vec(), logprobs, mu, sigma2, truncated: s.len() > max_tokens }
        })
        .collect()
}

/// For logits `x` `[len, V]` and the next tokens `[len]`: `log p(next)`, and the mean and
/// variance of `log p` under `p` (Min-K%++), each `[len]` on the logits' device. One fused
/// log-softmax in the model's f32 (libtorch's max-shifted, vectorised kernel); the moments are
/// per-row dot products, the variance two-pass (centred first, no cancellation). Checked against
/// the transformers reference to 1e-4 in the tests.
fn position_stats(x: &Tensor, next: &Tensor) -> [Tensor; 3] {
    let len = x.size()[0];
    let log_p = x.log_softmax(-1, Kind::Float);
    let target = log_p.gather(1, &next.unsqueeze(-1), false).view([len]);
    let mut p = log_p.exp();
    // Row-wise dot products as [len, 1, V] x [len, V, 1] batched matmuls: no [len, V] product
    // is materialised.
    let dot = |a: &Tensor, b: &Tensor| a.unsqueeze(1).matmul(&b.unsqueeze(-1)).view([len]);
    let mean = dot(&p, &log_p);
    let mut centred = log_p;
    let _ = centred.g_sub_(&mean.unsqueeze(-1));
    let _ = p.g_mul_(&centred);
    let var = dot(&p, &centred);
    [target, mean, var]
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
