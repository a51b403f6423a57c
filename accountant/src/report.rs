//! The accountants side by side, as people and scripts read them: the certified bounds (the
//! guarantee), the Edgeworth estimate (labelled as one) and RDP, with a warning when Edgeworth
//! strays from the certified value (docs/accounting.md, "Why it is only an estimate").

use crate::edgeworth::{self, EdgeworthEstimate, Order};
use crate::event::History;
use crate::pld::{Bounds, CertifiedEpsilon, PldAccountant};
use crate::rdp::{self, RdpEpsilon};
use crate::Result;
use serde::Serialize;

/// Epsilon at a delta, by every method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpsilonReport {
    /// The delta asked for.
    pub delta: f64,
    /// Total steps composed.
    pub steps: u64,
    /// Certified (PLD): `upper` is the guarantee.
    pub certified: CertifiedEpsilon,
    /// Edgeworth (EW-Tune): an estimate only.
    pub edgeworth: EdgeworthEstimate,
    /// Rényi DP bound.
    pub rdp: RdpEpsilon,
    /// Present when Edgeworth differs from the certified value by more than max(0.05, 2 %).
    pub warning: Option<String>,
}

/// Delta at an epsilon, by every method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeltaReport {
    /// The epsilon asked for.
    pub epsilon: f64,
    /// Total steps composed.
    pub steps: u64,
    /// Certified (PLD): `upper` is the guarantee.
    pub certified: Bounds,
    /// Edgeworth estimate of delta.
    pub edgeworth: f64,
    /// Edgeworth order used.
    pub edgeworth_order: u8,
    /// Rényi DP delta.
    pub rdp: f64,
}

/// The divergence warning, if Edgeworth strays from the certified estimate.
pub fn divergence_warning(certified: f64, edgeworth: &EdgeworthEstimate) -> Option<String> {
    let gap = (edgeworth.estimate - certified).abs();
    if gap.is_finite() && gap <= (0.02 * certified).max(0.05) {
        return None;
    }
    Some(format!(
        "the Edgeworth estimate (order {}) {:.4} differs from the certified epsilon {:.4} by more than max(0.05, 2%): \
         lambda3_sum = {:.3}, lambda4_sum = {:.3}; the expansion is unreliable here, rely on the certified value",
        edgeworth.order, edgeworth.estimate, certified, edgeworth.lambda3_sum, edgeworth.lambda4_sum
    ))
}

/// Epsilon at `delta` by all three accountants.
pub fn epsilon(history: &History, delta: f64, order: Order) -> Result<EpsilonReport> {
    let certified = PldAccountant::default().epsilon(history, delta)?;
    let edgeworth = edgeworth::epsilon(history, delta, order)?;
    let rdp = rdp::epsilon(history, delta)?;
    let warning = divergence_warning(certified.bounds.estimate, &edgeworth);
    Ok(EpsilonReport { delta, steps: history.total_steps(), certified, edgeworth, rdp, warning })
}

/// Delta at `eps` by all three accountants.
pub fn delta(history: &History, eps: f64, order: Order) -> Result<DeltaReport> {
    let certified = PldAccountant::default().delta(history, eps)?;
    Ok(DeltaReport {
        epsilon: eps,
        steps: history.total_steps(),
        certified,
        edgeworth: edgeworth::delta(history, eps, order)?,
        edgeworth_order: order.get(),
        rdp: rdp::delta(history, eps)?,
    })
}
