//! What the forward pass records for DP-SGD, and the per-unit gradient math on it, always in f32
//! (docs/dpsgd.md, Clipping without per-example gradients): per-example (per privacy unit) squared gradient norms without
//! per-example gradients (ghost norm or materialisation, whichever is cheaper per layer; Li et al., arXiv 2110.05679),
//! and the clipped gradient sum by book-keeping from the same single backward (Bu et al., arXiv 2210.00038).
//!
//! tch has no hooks, so every trainable layer pushes a [`Record`] holding its input (`A`) and the
//! output tensor whose gradient (`G`) the step asks autograd for.

use tch::{Kind, Tensor};

/// One trainable layer's activations, recorded by its forward.
pub enum Record {
    /// `s = x W (+ b)`; `weight` is `[out, in]` (nn.Linear) or `[in, out]` (HF Conv1D).
    Linear { input: Tensor, output: Tensor, weight: Tensor, bias: Option<Tensor>, in_out_layout: bool },
    /// LoRA branch `z = (x A^T) B^T` (the scale is applied after `z`, so autograd includes it in G_z).
    Lora { input: Tensor, hidden: Tensor, output: Tensor, a: Tensor, b: Tensor },
    /// `y = xhat * gamma (+ beta)` of a LayerNorm or RMSNorm.
    Norm { normalized: Tensor, output: Tensor, gamma: Tensor, beta: Option<Tensor> },
}

impl Record {
    /// The non-leaf tensors whose gradients the DP step requests from autograd.
    pub fn outputs(&self) -> Vec<&Tensor> {
        match self {
            Record::Linear { output, .. } | Record::Norm { output, .. } => vec![output],
            Record::Lora { hidden, output, .. } => vec![hidden, output],
        }
    }

    /// The trainable parameters of this record, in the order `clipped_sums` returns them.
    pub fn params(&self) -> Vec<&Tensor> {
        match self {
            Record::Linear { weight, bias, .. } => std::iter::once(weight).chain(bias.iter()).collect(),
            Record::Lora { a, b, .. } => vec![a, b],
            Record::Norm { gamma, beta, .. } => std::iter::once(gamma).chain(beta.iter()).collect(),
        }
    }
}

/// The records of one forward pass.
#[derive(Default)]
pub struct Tape {
    /// In forward order.
    pub records: Vec<Record>,
}

impl Tape {
    /// Pushes a record.
    pub fn push(&mut self, r: Record) {
        self.records.push(r);
    }
}

/// How the sequences of a micro-batch form privacy units: `index` maps `[units * per_unit]` slots
/// to sequence rows (`rows` = a zero padding row appended after the real ones), or `None` when
/// every sequence is its own unit.
pub struct Units {
    /// Number of privacy units in the micro-batch.
    pub count: usize,
    /// Sequences per unit (padded).
    pub per_unit: usize,
    index: Option<Tensor>,
    /// Unit of each sequence row.
    pub unit_of_row: Tensor,
}

impl Units {
    /// Every sequence is its own unit.
    pub fn per_sequence(rows: usize, device: tch::Device) -> Self {
        Units { count: rows, per_unit: 1, index: None, unit_of_row: Tensor::arange(rows as i64, (Kind::Int64, device)) }
    }

    /// `groups[u]` lists the sequence rows of unit u (privacy unit = user).
    pub fn grouped(groups: &[Vec<usize>], rows: usize, device: tch::Device) -> Self {
        let per_unit = groups.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut slots = Vec::with_capacity(groups.len() * per_unit);
        let mut unit_of_row = vec![0i64; rows];
        for (u, g) in groups.iter().enumerate() {
            for k in 0..per_unit {
                slots.push(g.get(k).map(|&r| r as i64).unwrap_or(rows as i64));
            }
            for &r in g {
                unit_of_row[r] = u as i64;
            }
        }
        Units {
            count: groups.len(),
            per_unit,
            index: Some(Tensor::from_slice(&slots).to_device(device)),
            unit_of_row: Tensor::from_slice(&unit_of_row).to_device(device),
        }
    }

    /// `[rows, T, d]` -> `[units, per_unit * T, d]` (padding slots are zero).
    pub fn gather(&self, x: &Tensor) -> Tensor {
        match &self.index {
            None => x.shallow_clone(),
            Some(index) => {
                let size = x.size();
                let mut pad_shape = size.clone();
                pad_shape[0] = 1;
                let padded = Tensor::cat(&[x, &Tensor::zeros(&pad_shape, (x.kind(), x.device()))], 0);
                let picked = padded.index_select(0, index);
                let mut shape = vec![self.count as i64, self.per_unit as i64 * size[1]];
                shape.extend_from_slice(&size[2..]);
                picked.reshape(&shape[..])
            }
        }
    }
}

/// Activations and gradients in f32: every per-unit norm and clipped sum is computed in f32,
/// whatever the precision of the forward/backward (a no-op in f32 training).
fn f32(x: &Tensor) -> Tensor {
    x.to_kind(Kind::Float)
}

/// Per-unit gradient information of one record, computed once for the norm and the sum.
pub enum UnitGrads {
    /// A linear layer: nothing materialised (ghost norm or a transient per-unit product).
    Linear,
    /// Per-unit gradients of small parameters (LoRA factors, norm scales), `[U, ...]` each.
    Materialized(Vec<Tensor>),
}

/// Materialises what is cheap to materialise for `record` (LoRA: `[U, r, in]`, `[U, out, r]`;
/// norms: `[U, d]`).
pub fn unit_grads(record: &Record, grads: &[Tensor], units: &Units) -> UnitGrads {
    match record {
        Record::Linear { .. } => UnitGrads::Linear,
        Record::Lora { input, hidden, .. } => {
            let (ga, gb) = lora_unit_grads(input, hidden, &grads[0], &grads[1], units);
            UnitGrads::Materialized(vec![ga, gb])
        }
        Record::Norm { normalized, beta, .. } => {
            let (gg, gb) = norm_unit_grads(normalized, &grads[0], units, beta.is_some());
            UnitGrads::Materialized(std::iter::once(gg).chain(gb).collect())
        }
    }
}

/// Squared gradient norm of one record, per unit: `[units]` (f32).
pub fn squared_norms(record: &Record, grads: &[Tensor], per_unit: &UnitGrads, units: &Units) -> Tensor {
    match (record, per_unit) {
        (Record::Linear { input, bias, .. }, _) => {
            let a = units.gather(&f32(input));
            let g = units.gather(&f32(&grads[0]));
            let (_, t, d_in) = a.size3().expect("linear input is [B, T, in]");
            let d_out = g.size()[2];
            // docs/dpsgd.md, Clipping without per-example gradients: ghost iff 2T^2 < d_in d_out (memory), else materialise G^T A per unit.
            let w = if 2 * t * t < d_in * d_out {
                (a.bmm(&a.transpose(1, 2)) * g.bmm(&g.transpose(1, 2))).sum_dim_intlist(&[1i64, 2][..], false, Kind::Float)
            } else {
                g.transpose(1, 2).bmm(&a).square().sum_dim_intlist(&[1i64, 2][..], false, Kind::Float)
            };
            match bias {
                Some(_) => w + g.sum_dim_intlist(&[1i64][..], false, Kind::Float).square().sum_dim_intlist(&[1i64][..], false, Kind::Float),
                None => w,
            }
        }
        (_, UnitGrads::Materialized(gs)) => {
            let units = gs[0].size()[0];
            gs.iter().map(|g| g.reshape([units, -1]).square().sum_dim_intlist(&[1i64][..], false, Kind::Float)).fold(
                Tensor::zeros([units], (Kind::Float, gs[0].device())),
                |acc, x| acc + x,
            )
        }
        (_, UnitGrads::Linear) => unreachable!("only linear records have no materialised gradients"),
    }
}

/// Per-unit LoRA gradients, materialised (cheap: r is small): `(dA [U, r, in], dB [U, out, r])`.
fn lora_unit_grads(input: &Tensor, hidden: &Tensor, g_hidden: &Tensor, g_out: &Tensor, units: &Units) -> (Tensor, Tensor) {
    let x = units.gather(&f32(input));
    let h = units.gather(&f32(hidden));
    let gh = units.gather(&f32(g_hidden));
    let gz = units.gather(&f32(g_out));
    (gh.transpose(1, 2).bmm(&x), gz.transpose(1, 2).bmm(&h))
}

/// Per-unit norm-layer gradients: `(dgamma [U, d], dbeta [U, d])`.
fn norm_unit_grads(normalized: &Tensor, g: &Tensor, units: &Units, with_beta: bool) -> (Tensor, Option<Tensor>) {
    let xh = units.gather(&f32(normalized));
    // A per-head norm's output gradient is [B, T, H, d]; `normalized` was recorded as [B, T H, d].
    let g = units.gather(&f32(g).reshape(normalized.size()));
    let dgamma = (&g * &xh).sum_dim_intlist(&[1i64][..], false, Kind::Float);
    let dbeta = with_beta.then(|| g.sum_dim_intlist(&[1i64][..], false, Kind::Float));
    (dgamma, dbeta)
}

/// The clip factors of a micro-batch's units, `c_u = min(1, C / (||g_u|| + 1e-6))`, and which
/// units are left out of the clipped sum: those whose norm is not finite (jax_privacy's
/// `nan_safe`), whose factor is 0.
pub struct ClipFactors {
    /// `[units]` (f32), 0 for an excluded unit.
    pub unit: Tensor,
    /// `[rows]`: the factor of each sequence row's unit.
    pub row: Tensor,
    /// Boolean masks `([units], [rows])` of the excluded units and their rows; `None` when every
    /// norm is finite.
    excluded: Option<(Tensor, Tensor)>,
}

impl ClipFactors {
    /// The factors for the per-unit gradient norms `norms` (`[units]`, f32) of `units` at clip
    /// norm `clip_norm`. Reads on the host whether any norm is non-finite (one small copy per
    /// micro-batch, which the caller makes anyway to report the norms).
    pub fn new(norms: &Tensor, clip_norm: f64, units: &Units) -> Self {
        let finite = norms.isfinite();
        let clip = super::dpsgd::clip_factors(norms, clip_norm);
        let unit = clip.where_self(&finite, &Tensor::zeros_like(&clip));
        let row = unit.index_select(0, &units.unit_of_row);
        let excluded = (finite.all().int64_value(&[]) == 0).then(|| {
            let unit = finite.logical_not();
            let row = unit.index_select(0, &units.unit_of_row);
            (unit, row)
        });
        ClipFactors { unit, row, excluded }
    }
}

/// `sum_u c_u grad_u` for every parameter of the record (same order as [`Record::params`]),
/// by book-keeping (one GEMM per linear layer). An excluded unit (non-finite norm) adds exactly
/// nothing: its gradient rows, and a linear layer's input rows, are replaced by zeros with a
/// select before the sum, not multiplied by its zero factor, since 0 x inf and 0 x NaN are NaN
/// and would turn the whole sum (and the noisy update) into NaN. A unit with a finite norm has
/// only finite inputs and output gradients (any inf or NaN among them makes its norm
/// non-finite), so without an excluded unit the multiplication alone is exact.
pub fn clipped_sums(record: &Record, grads: &[Tensor], per_unit: &UnitGrads, clip: &ClipFactors) -> Vec<Tensor> {
    match (record, per_unit) {
        (Record::Linear { input, bias, in_out_layout, .. }, _) => {
            let g = f32(&grads[0]);
            let d_out = g.size()[2];
            let d_in = input.size()[2];
            let mut gs = g * clip.row.view([-1, 1, 1]);
            let mut a = f32(input);
            if let Some((_, rows)) = &clip.excluded {
                let rows = rows.view([-1, 1, 1]);
                gs = gs.masked_fill(&rows, 0.0);
                a = a.masked_fill(&rows, 0.0);
            }
            let gs = gs.reshape([-1, d_out]);
            let a = a.reshape([-1, d_in]);
            let dw = if *in_out_layout { a.transpose(0, 1).matmul(&gs) } else { gs.transpose(0, 1).matmul(&a) };
            let mut out = vec![dw];
            if bias.is_some() {
                out.push(gs.sum_dim_intlist(&[0i64][..], false, Kind::Float));
            }
            out
        }
        (_, UnitGrads::Materialized(gs)) => gs
            .iter()
            .map(|g| {
                let shape = g.size();
                let mut g = g.reshape([shape[0], -1]);
                if let Some((units, _)) = &clip.excluded {
                    g = g.masked_fill(&units.view([-1, 1]), 0.0);
                }
                clip.unit.matmul(&g).reshape(&shape[1..])
            })
            .collect(),
        (_, UnitGrads::Linear) => unreachable!("only linear records have no materialised gradients"),
    }
}
