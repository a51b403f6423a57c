//! The one-run lower bound of a job's self-audit (docs/self_audit.md): the gradient canaries'
//! log-likelihood-ratio scores ([`Observations::scores`]) ranked into guesses, bounded by the one-run
//! test of Steinke, Nasr & Jagielski ("Privacy Auditing with One (1) Training Run", NeurIPS
//! 2023) at 95 % over a fixed grid of guess counts (Bonferroni). It is a rigorous (epsilon,
//! delta) lower bound, and expected to sit well below the certified epsilon when everything is
//! right (white-box, all iterates: about 15-40 % of it at 10^3-10^4 canaries); the decision on
//! the machinery is the goodness-of-fit tests', not this number's.

use super::Observations;
use crate::stats::bounds::{self, BoundError, OneRunAudit};
use crate::stats::fdp_one_run::k_plus_grid;

/// The Steinke-Nasr-Jagielski lower bound at 95 % from a job's canaries, over the 14 guess
/// pairs of the f-DP test (fixed before the scores are seen): the top k+ guessed "in" for k+ in
/// [`k_plus_grid`] (0.5 to 50 % of m) and, for each, the bottom k- = 0 or k+ "out", each pair
/// bounded at 0.05 / 14 (Bonferroni).
pub fn steinke_bound(observations: &Observations, delta: f64) -> Result<OneRunAudit, BoundError> {
    let (scores, included) = (observations.scores(), observations.included());
    let k_plus = k_plus_grid(scores.len());
    let pairs = 2 * k_plus.len();
    let per_pair = bounds::DEFAULT_BETA / pairs as f64;
    // one_run_audit bounds a product grid at beta / its size: the k- = 0 column as one grid,
    // then each k- = k+ pair on its own, every pair at the same per-pair level.
    let mut audit = bounds::one_run_audit(scores, included, delta, per_pair * k_plus.len() as f64, &k_plus, &[0])?;
    for &k in &k_plus {
        let pair = bounds::one_run_audit(scores, included, delta, per_pair, &[k], &[k])?;
        if pair.best.eps_lb > audit.best.eps_lb {
            audit.best = pair.best;
        }
        audit.grid.extend(pair.grid);
    }
    audit.beta = bounds::DEFAULT_BETA;
    audit.beta_used = per_pair;
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::super::observations::simulate::{run, Machinery, HONEST};

    /// An honest job at sampling rate 0.05, sigma 0.8, 40 steps, delta 1e-5 with 1000 canaries
    /// (certified epsilon about 4.1): the bound's median over 21 seeded runs lies where an
    /// idealised simulation of the mechanism puts it (about 0.6, 15 % of certified; its
    /// 10th-90th percentiles span -35 % / +60 %), far below the certified epsilon.
    #[test]
    fn an_honest_job_bounds_epsilon_where_the_idealised_mechanism_does() {
        let history = ewtune_accountant::History::homogeneous(0.8, 0.05, 40).unwrap();
        let certified = ewtune_accountant::pld::PldAccountant::default().epsilon(&history, 1e-5).unwrap().bounds.upper;
        assert!((3.9..4.4).contains(&certified), "{certified}");
        let mut bounds: Vec<f64> = (0..21).map(|seed| steinke_bound(&run(seed, 1000, 40, 0.05, 0.8, HONEST), 1e-5).unwrap().best.eps_lb).collect();
        bounds.sort_by(f64::total_cmp);
        let median = bounds[bounds.len() / 2];
        assert!((0.35..1.0).contains(&median), "median {median}: {bounds:?}");
        assert!(median / certified < 0.25, "{median} of {certified}");
        assert!(bounds.iter().all(|&e| e < certified), "no honest bound above the certified epsilon: {bounds:?}");
        let audit = steinke_bound(&run(0, 1000, 40, 0.05, 0.8, HONEST), 1e-5).unwrap();
        assert_eq!(audit.grid.len(), 14);
        assert_eq!(audit.beta_used, 0.05 / 14.0);
    }

    /// Without noise on the canaries the scores separate them almost perfectly: the bound
    /// climbs toward its ceiling for m = 1000 (about 4.3-5 at delta 1e-5), past what an honest
    /// run reaches.
    #[test]
    fn a_noiseless_run_bounds_epsilon_near_the_ceiling() {
        let mech = Machinery { canary_noise: 0.05, ..HONEST };
        let eps = steinke_bound(&run(7, 1000, 200, 0.05, 1.5, mech), 1e-5).unwrap().best.eps_lb;
        let ceiling = bounds::one_run_ceiling(1000, 1e-5, 0.05 / 14.0).unwrap().eps;
        assert!(eps > 3.0 && eps <= ceiling + 1e-9, "{eps} (ceiling {ceiling})");
    }
}
