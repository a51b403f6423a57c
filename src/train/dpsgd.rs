//! The DP-SGD step (docs/dpsgd.md, The step; Clipping without per-example gradients): per physical micro-batch one forward that
//! records the tape, one backward that returns the output gradients of the trainable layers,
//! per-unit norms, clipping factors, and the clipped gradient sum by book-keeping; at the end of
//! the logical batch, Gaussian noise once, division by the expected batch size q N.
//!
//! Also the two references this step is measured against: the non-private step (same forward,
//! ordinary backward of the mean loss) and the naive oracle (one backward per unit).

use super::model::{sequence_losses, Model};
use super::tape::{clipped_sums, squared_norms, unit_grads, ClipFactors, Tape, Units};
use super::TrainError;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// Clipping stabiliser of Opacus / private-transformers: `c = min(1, C / (norm + 1e-6))`.
pub const NORM_EPS: f64 = 1e-6;

/// The clipping factors `min(1, C / (norm + 1e-6))` of per-unit gradient norms `[U]`: the one
/// formula every unit goes through, on the tape, across passes, and the self-audit's gradient
/// canaries.
pub fn clip_factors(norms: &Tensor, clip_norm: f64) -> Tensor {
    (clip_norm / (norms + NORM_EPS)).clamp_max(1.0)
}

/// [`clip_factors`] of one norm.
pub fn clip_factor(norm: f64, clip_norm: f64) -> f64 {
    (clip_norm / (norm + NORM_EPS)).min(1.0)
}

/// A physical micro-batch: token ids and loss mask `[S, T]`, and how its sequences form units.
pub struct MicroBatch {
    /// Token ids, right-padded.
    pub ids: Tensor,
    /// 1 where the token is a training target.
    pub loss_mask: Tensor,
    /// Privacy units of the rows.
    pub units: Units,
}

/// Running sums of clipped per-unit gradients over a logical batch, one per trainable tensor.
pub struct ClippedSum {
    slots: HashMap<usize, usize>,
    /// `(name, parameter, accumulated sum)` in the model's order.
    pub entries: Vec<(String, Tensor, Tensor)>,
    /// Units processed so far in this logical batch.
    pub units: usize,
}

impl ClippedSum {
    /// Sums for the model's trainable tensors, each taken over by the first clipped sum added
    /// to it (no zero-fill and add pass).
    pub fn new(model: &Model) -> Self {
        let mut slots = HashMap::new();
        let entries: Vec<_> = model
            .trainable()
            .into_iter()
            .enumerate()
            .map(|(i, (name, p))| {
                slots.insert(p.data_ptr() as usize, i);
                (name, p, Tensor::new())
            })
            .collect();
        ClippedSum { slots, entries, units: 0 }
    }

    /// Adds a tensor outside the model to the sums (the self-audit's block, which the forward
    /// pass never reads): it is noised and divided like every trainable tensor.
    pub fn push_tensor(&mut self, name: &str, param: &Tensor) {
        self.slots.insert(param.data_ptr() as usize, self.entries.len());
        self.entries.push((name.to_owned(), param.shallow_clone(), Tensor::new()));
    }

    /// Adds `value` (a fresh f32 tensor) to the sum of `param`.
    fn add(&mut self, param: &Tensor, value: Tensor) -> Result<(), TrainError> {
        let slot = self.slots[&(param.data_ptr() as usize)];
        add_to(&mut self.entries[slot].2, value)
    }

    /// The sums, zero for a tensor nothing was added to (an empty logical batch).
    pub fn sums(&mut self) -> impl Iterator<Item = (&String, &Tensor, &mut Tensor)> {
        for (_, p, sum) in &mut self.entries {
            if !sum.defined() {
                *sum = Tensor::zeros(p.size(), (Kind::Float, p.device()));
            }
        }
        self.entries.iter_mut().map(|(n, p, s)| (&*n, &*p, s))
    }
}

fn add_to(sum: &mut Tensor, value: Tensor) -> Result<(), TrainError> {
    if sum.defined() {
        let _ = sum.f_add_(&value)?;
    } else {
        *sum = value;
    }
    Ok(())
}

/// Clips every unit of `mb` to `clip_norm` and adds the clipped sum to `acc`; returns the
/// per-unit gradient norms `[U]` (before clipping).
pub fn clip_and_accumulate(model: &Model, mb: &MicroBatch, clip_norm: f64, acc: &mut ClippedSum) -> Result<Tensor, TrainError> {
    let mut tape = Tape::default();
    let logits = model.forward(&mb.ids, Some(&mut tape));
    let total = sequence_losses(&logits, &mb.ids, &mb.loss_mask).sum(Kind::Float);
    let outputs: Vec<&Tensor> = tape.records.iter().flat_map(|r| r.outputs()).collect();
    if outputs.is_empty() {
        return Err(TrainError::NothingToTrain);
    }
    let grads = Tensor::f_run_backward(&[&total], &outputs, false, false)?;
    let _guard = tch::no_grad_guard();
    let mut offset = 0;
    let mut per_record = Vec::with_capacity(tape.records.len());
    let mut n2 = Tensor::zeros([mb.units.count as i64], (Kind::Float, mb.ids.device()));
    for r in &tape.records {
        let k = r.outputs().len();
        let g = &grads[offset..offset + k];
        let per_unit = unit_grads(r, g, &mb.units);
        n2 += squared_norms(r, g, &per_unit, &mb.units);
        per_record.push((r, g, per_unit));
        offset += k;
    }
    let norms = n2.sqrt();
    // c = min(1, C / (||g|| + 1e-6)); a unit with a non-finite norm contributes nothing (jax_privacy
    // nan_safe): `clipped_sums` selects its rows out rather than multiplying them by 0.
    let clip = ClipFactors::new(&norms, clip_norm, &mb.units);
    for (r, g, per_unit) in per_record {
        for (param, sum) in r.params().into_iter().zip(clipped_sums(r, g, &per_unit, &clip)) {
            acc.add(param, sum)?;
        }
    }
    acc.units += mb.units.count;
    Ok(norms)
}

/// Clips units whose gradient is one coordinate of `block` each (the self-audit's gradient
/// canaries: `magnitude` on coordinate `coordinates[i]`, zero everywhere else) and adds their
/// clipped sum to `acc`, as every unit: the gradient's norm, [`clip_factors`], the scaled sum.
pub fn clip_and_accumulate_coordinates(block: &Tensor, coordinates: &[usize], magnitude: f64, clip_norm: f64, acc: &mut ClippedSum) -> Result<(), TrainError> {
    if coordinates.is_empty() {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    let device = block.device();
    let index = Tensor::from_slice(&coordinates.iter().map(|&c| c as i64).collect::<Vec<_>>()).to_device(device);
    let grads = Tensor::full([coordinates.len() as i64], magnitude, (Kind::Float, device));
    let norms = grads.square().sqrt();
    let clipped = &grads * clip_factors(&norms, clip_norm);
    let sum = Tensor::zeros(block.size(), (Kind::Float, device)).f_index_add(0, &index, &clipped)?;
    acc.add(block, sum)?;
    acc.units += coordinates.len();
    Ok(())
}

/// Clips one privacy unit too large for one pass and adds it to `acc`: `chunks` yields its
/// sequences (ids, loss mask) in passes of at most the micro-batch; each pass's gradient of the
/// unit's summed loss is added, by ordinary autograd, into one buffer the size of the trainable
/// parameters, so after the last pass it holds the gradient of the whole unit. Its norm is then
/// taken and clipped once, exactly as if the unit had gone through in one pass; a unit whose norm
/// is not finite adds nothing. Returns the unit's gradient norm (before clipping).
pub fn clip_and_accumulate_unit(model: &Model, chunks: impl IntoIterator<Item = (Tensor, Tensor)>, clip_norm: f64, acc: &mut ClippedSum) -> Result<f64, TrainError> {
    let params: Vec<Tensor> = acc.entries.iter().map(|(_, p, _)| p.shallow_clone()).collect();
    let mut grad: Option<Vec<Tensor>> = None;
    for (ids, mask) in chunks {
        let loss = sequence_losses(&model.forward(&ids, None), &ids, &mask).sum(Kind::Float);
        let g = Tensor::f_run_backward(&[&loss], &params, false, false)?;
        let _guard = tch::no_grad_guard();
        match grad.as_mut() {
            None => grad = Some(g),
            Some(sum) => {
                for (s, x) in sum.iter_mut().zip(&g) {
                    let _ = s.f_add_(x)?;
                }
            }
        }
    }
    let Some(grad) = grad else { return Ok(0.0) };
    let _guard = tch::no_grad_guard();
    let norm = grad.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
    acc.units += 1;
    // As in `clip_and_accumulate`: c = min(1, C / (||g|| + 1e-6)), and nothing at all from a unit
    // with a non-finite norm: its gradient is skipped, not multiplied by 0 (0 x NaN = NaN).
    if !norm.is_finite() {
        return Ok(norm);
    }
    let c = clip_factor(norm, clip_norm);
    for ((_, _, sum), g) in acc.entries.iter_mut().zip(&grad) {
        add_to(sum, g * c)?;
    }
    Ok(norm)
}

/// The naive oracle: one forward and backward per unit; returns the per-unit norms and the
/// clipped sum per trainable tensor (test reference only).
pub fn naive_clipped_sum(model: &Model, mb: &MicroBatch, groups: &[Vec<usize>], clip_norm: f64) -> (Vec<f64>, Vec<Tensor>) {
    let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, p)| p).collect();
    let mut sums: Vec<Tensor> = params.iter().map(Tensor::zeros_like).collect();
    let mut norms = Vec::new();
    for rows in groups {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(mb.ids.device());
        let ids = mb.ids.index_select(0, &idx);
        let mask = mb.loss_mask.index_select(0, &idx);
        let loss = sequence_losses(&model.forward(&ids, None), &ids, &mask).sum(Kind::Float);
        let grads = Tensor::run_backward(&[&loss], &params, false, false);
        let _guard = tch::no_grad_guard();
        let norm = grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
        let c = (clip_norm / (norm + NORM_EPS)).min(1.0);
        for (s, g) in sums.iter_mut().zip(&grads) {
            *s += g * c;
        }
        norms.push(norm);
    }
    (norms, sums)
}

/// The non-private reference step's gradient: ordinary backward of the mean sequence loss into
/// the parameters' `.grad` (used by the DP-overhead benchmark).
pub fn nonprivate_backward(model: &Model, mb: &MicroBatch) -> Result<f64, TrainError> {
    let logits = model.forward(&mb.ids, None);
    let loss = sequence_losses(&logits, &mb.ids, &mb.loss_mask).mean(Kind::Float);
    loss.f_backward()?;
    Ok(loss.double_value(&[]))
}
