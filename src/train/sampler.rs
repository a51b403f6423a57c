//! Poisson sampling of logical batches and their split into physical micro-batches. Implements
//! docs/dpsgd.md, Poisson sampling (as Opacus' `UniformWithReplacementSampler`: every unit is included
//! independently with probability q at every step, so the batch size is Binomial(N, q) and empty
//! batches are legal) and the logical/physical split described there. It does not own the random source
//! (pass the job's CSPRNG, e.g. its `noise::NoiseSource`, docs/dpsgd.md, Noise), the step count, or the
//! accountant's `PoissonSampled { q, .. }` event, which must be fed this sampler's q.

use rand::RngCore;

/// A rejected sampler argument; each variant names the argument and carries its value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// `sample_rate` must lie in (0, 1].
    #[error("sample_rate must be in (0, 1], got {sample_rate}")]
    SampleRate {
        /// The rejected value.
        sample_rate: f64,
    },
    /// `population` must be at least 1.
    #[error("population must be at least 1, got {population}")]
    Population {
        /// The rejected value.
        population: usize,
    },
    /// `max_physical` (the largest micro-batch) must be at least 1.
    #[error("max_physical must be at least 1, got {max_physical}")]
    MaxPhysical {
        /// The rejected value.
        max_physical: usize,
    },
}

/// Poisson sampling: at every step each of `population` units (examples, or users under
/// user-level DP) is included independently with probability `sample_rate` = q.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoissonSampler {
    sample_rate: f64,
    population: usize,
}

impl PoissonSampler {
    /// Validates q ∈ (0, 1] (NaN is rejected) and `population` >= 1.
    pub fn new(sample_rate: f64, population: usize) -> Result<Self, SamplerError> {
        if !(sample_rate > 0.0 && sample_rate <= 1.0) {
            return Err(SamplerError::SampleRate { sample_rate });
        }
        if population == 0 {
            return Err(SamplerError::Population { population });
        }
        Ok(Self { sample_rate, population })
    }

    /// The inclusion probability q.
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate
    }

    /// The number of units N.
    pub fn population(&self) -> usize {
        self.population
    }

    /// q·N, the expected logical batch size: DP-SGD divides the noisy sum by this, never by the
    /// realised size (docs/dpsgd.md, The step).
    pub fn expected_batch_size(&self) -> f64 {
        self.sample_rate * self.population as f64
    }

    /// The sorted, distinct indices in `0..population` included at this step; often empty when
    /// q·N is small. An empty batch is still a step: it must be noised and accounted.
    ///
    /// Runs in O(q·N + 1) by geometric skipping rather than one Bernoulli draw per unit. The gaps
    /// between included indices of an i.i.d. Bernoulli(q) sequence are i.i.d. Geometric(q)
    /// (failures before a success), and conversely, so drawing the gaps gives exactly the
    /// per-unit Bernoulli(q) process that Opacus draws with `torch.rand(N) < q`. Each gap is an
    /// exact inversion: with U uniform on the 2^53-point grid {1, …, 2^53}·2^-53 ⊂ (0, 1],
    /// `G = floor(ln U / ln(1 − q))` satisfies P(G ≥ k) = P(U ≤ (1 − q)^k) = (1 − q)^k up to the
    /// grid step 2^-53 and the last-ulp rounding of `ln`, `ln_1p` and the division. `ln(1 − q)`
    /// is computed as `ln_1p(−q)`, accurate for tiny q. The longest representable gap,
    /// −ln(2^-53)/q ≈ 36.7/q, is cut off with probability (1 − q)^(36.7/q) ≤ e^-36.7 ≈ 2^-53.
    /// q = 1 returns every index without drawing.
    ///
    /// The running time grows with the batch size; like the batch size itself, that is not
    /// released by DP-SGD.
    pub fn sample(&self, rng: &mut impl RngCore) -> Vec<usize> {
        let n = self.population;
        if self.sample_rate >= 1.0 {
            return (0..n).collect();
        }
        let log_keep = (-self.sample_rate).ln_1p(); // ln(1 − q) < 0, finite for q ∈ (0, 1).
        let expected = self.expected_batch_size();
        // A capacity hint only (saturating float-to-int cast): mean + 6 sd + slack, at most N.
        let hint = (expected + 6.0 * expected.sqrt() + 16.0) as usize;
        let mut included = Vec::with_capacity(hint.min(n));
        let mut next = 0usize; // first index not yet decided
        while next < n {
            let gap = (uniform_open_closed(rng).ln() / log_keep).floor();
            // `gap` is >= 0 (or -0.0 when U = 1) and may be +inf for tiny q.
            if gap >= (n - next) as f64 {
                break;
            }
            let index = next + gap as usize;
            included.push(index);
            next = index + 1;
        }
        included
    }
}

/// A uniform draw on {1, 2, …, 2^53}·2^-53 ⊂ (0, 1]: the top 53 bits of one `u64`, plus one.
/// Every value is an exact `f64`, and 0 (whose logarithm is −∞) never occurs.
fn uniform_open_closed(rng: &mut impl RngCore) -> f64 {
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    ((rng.next_u64() >> 11) + 1) as f64 * SCALE
}

/// One physical forward/backward pass (or, for a large unit, several) of a logical batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// Whole units in one pass, each clipped from the one backward (ghost norms and book-keeping
    /// on the tape). Their sequences, padded to the largest unit's count, fit the micro-batch:
    /// `units x max sequences <= max_sequences`.
    Units(Vec<usize>),
    /// One unit with more sequences than a pass holds: its sequences go through successive
    /// passes of at most `max_sequences` each, its gradient is accumulated over them, and its
    /// norm is taken and clipped once, over the whole unit.
    Split {
        /// The unit.
        unit: usize,
        /// Its sequences.
        sequences: usize,
    },
}

/// Splits a logical batch into physical passes of at most `max_sequences` sequences each, so
/// that memory is bounded by the micro-batch whatever the size of a privacy unit.
/// `sequences(u)` is the number of
/// sequences of unit `u` (1 per example-level unit). Units that fit are packed largest first,
/// at most `max_sequences / s` of them with `s` sequences at most; a unit larger than
/// `max_sequences` becomes a [`Pass::Split`]. Units of equal size keep their batch order, so an
/// example-level batch is cut in order into chunks of `max_sequences`. An empty logical batch
/// yields no pass; the step's noise is added once, after every pass.
pub fn plan_passes(indices: &[usize], sequences: impl Fn(usize) -> usize, max_sequences: usize) -> Result<Vec<Pass>, SamplerError> {
    if max_sequences == 0 {
        return Err(SamplerError::MaxPhysical { max_physical: max_sequences });
    }
    let mut sized: Vec<(usize, usize)> = indices.iter().map(|&u| (u, sequences(u).max(1))).collect();
    sized.sort_by_key(|&(_, s)| std::cmp::Reverse(s)); // stable: equal sizes keep their order
    let mut passes = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut capacity = 0;
    for (u, s) in sized {
        if s > max_sequences {
            passes.push(Pass::Split { unit: u, sequences: s });
            continue;
        }
        if current.len() == capacity {
            if !current.is_empty() {
                passes.push(Pass::Units(std::mem::take(&mut current)));
            }
            // Sizes only decrease from here: the first unit of a pass is its largest.
            capacity = max_sequences / s;
        }
        current.push(u);
    }
    if !current.is_empty() {
        passes.push(Pass::Units(current));
    }
    Ok(passes)
}

#[cfg(test)]
mod tests {
    //! All randomness here is a ChaCha20Rng with a fixed, public test seed: reproducible, not private.

    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn seeded(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    fn assert_valid(batch: &[usize], population: usize) {
        assert!(batch.windows(2).all(|w| w[0] < w[1]), "not sorted and distinct");
        assert!(batch.iter().all(|&i| i < population), "index out of range");
    }

    #[test]
    fn batch_size_mean_and_variance_are_binomial() {
        for (q, population, steps, seed) in
            [(0.05, 1000, 20_000, 1), (0.5, 200, 20_000, 2), (0.97, 300, 20_000, 3)]
        {
            let sampler = PoissonSampler::new(q, population).unwrap();
            let mut rng = seeded(seed);
            let sizes: Vec<f64> = (0..steps)
                .map(|_| {
                    let b = sampler.sample(&mut rng);
                    assert_valid(&b, population);
                    b.len() as f64
                })
                .collect();
            let t = steps as f64;
            let n = population as f64;
            let mean = sizes.iter().sum::<f64>() / t;
            let var = sizes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (t - 1.0);
            let sigma2 = n * q * (1.0 - q);
            // Binomial fourth central moment; SE of the sample variance is √((μ4 − σ⁴(t−3)/(t−1))/t).
            let mu4 = sigma2 * (1.0 + 3.0 * (n - 2.0) * q * (1.0 - q));
            let se_var = ((mu4 - sigma2 * sigma2 * (t - 3.0) / (t - 1.0)) / t).sqrt();
            assert!((mean - n * q).abs() < 6.0 * (sigma2 / t).sqrt(), "q {q}: mean {mean}");
            assert!((var - sigma2).abs() < 6.0 * se_var, "q {q}: variance {var} vs {sigma2}");
        }
    }

    /// Pearson chi-square over units: Σ (c_i − Tq)² / (Tq(1−q)) is ≈ χ²_N for independent units.
    #[test]
    fn every_unit_is_included_with_probability_q() {
        for (q, population, steps, seed) in [(0.1, 500, 20_000, 4), (0.003, 2000, 100_000, 5)] {
            let sampler = PoissonSampler::new(q, population).unwrap();
            let mut rng = seeded(seed);
            let mut counts = vec![0u64; population];
            for _ in 0..steps {
                for i in sampler.sample(&mut rng) {
                    counts[i] += 1;
                }
            }
            let expected = steps as f64 * q;
            let chi2: f64 =
                counts.iter().map(|&c| (c as f64 - expected).powi(2) / (expected * (1.0 - q))).sum();
            let n = population as f64;
            assert!((chi2 - n).abs() < 6.0 * (2.0 * n).sqrt(), "q {q}: chi2 {chi2} for {population} units");
            // First and last units in particular (the skipping must not favour either end).
            for &c in [counts[0], counts[population - 1]].iter() {
                let sd = (expected * (1.0 - q)).sqrt();
                assert!((c as f64 - expected).abs() < 6.0 * sd);
            }
        }
    }

    /// The joint law, not only the marginals: with N = 3 every one of the 8 subsets S must have
    /// probability q^|S| (1−q)^(3−|S|). Pearson chi-square with 7 degrees of freedom, 40.5 ≈ the
    /// 1 − 1e-6 quantile.
    #[test]
    fn subsets_have_product_probabilities() {
        for (q, seed) in [(0.3, 6), (0.5, 7), (0.9, 8), (0.02, 9)] {
            let sampler = PoissonSampler::new(q, 3).unwrap();
            let mut rng = seeded(seed);
            let steps = 400_000;
            let mut cells = [0u64; 8];
            for _ in 0..steps {
                let mask = sampler.sample(&mut rng).iter().fold(0usize, |m, &i| m | 1 << i);
                cells[mask] += 1;
            }
            let chi2: f64 = (0..8usize)
                .map(|mask| {
                    let k = mask.count_ones() as i32;
                    let e = steps as f64 * q.powi(k) * (1.0 - q).powi(3 - k);
                    (cells[mask] as f64 - e).powi(2) / e
                })
                .sum();
            assert!(chi2 < 40.5, "q {q}: chi2 {chi2}, cells {cells:?}");
        }
    }

    #[test]
    fn rate_one_includes_everyone() {
        let sampler = PoissonSampler::new(1.0, 37).unwrap();
        let mut rng = seeded(10);
        for _ in 0..3 {
            assert_eq!(sampler.sample(&mut rng), (0..37).collect::<Vec<_>>());
        }
        assert_eq!(sampler.expected_batch_size(), 37.0);
    }

    #[test]
    fn tiny_rate_gives_empty_batches_at_rate_one_minus_q_to_the_n() {
        let (q, population, steps) = (1e-3, 1000, 50_000);
        let sampler = PoissonSampler::new(q, population).unwrap();
        let mut rng = seeded(11);
        let empty = (0..steps).filter(|_| sampler.sample(&mut rng).is_empty()).count() as f64;
        let p0 = (1.0f64 - q).powi(population as i32); // ≈ 0.3677
        let t = steps as f64;
        assert!((empty / t - p0).abs() < 6.0 * (p0 * (1.0 - p0) / t).sqrt(), "empty rate {}", empty / t);
    }

    /// Geometric skipping costs O(qN): a population of 2^40 with q = 1e-9 samples ~1100 indices
    /// without touching the others.
    #[test]
    fn huge_population_small_rate_is_cheap_and_correct() {
        let population = 1usize << 40;
        let q = 1e-9;
        let sampler = PoissonSampler::new(q, population).unwrap();
        let mut rng = seeded(12);
        let mut total = 0usize;
        let steps = 50;
        for _ in 0..steps {
            let b = sampler.sample(&mut rng);
            assert_valid(&b, population);
            total += b.len();
        }
        let mean = sampler.expected_batch_size() * steps as f64;
        assert!((total as f64 - mean).abs() < 6.0 * mean.sqrt(), "total {total} vs {mean}");
    }

    #[test]
    fn rate_near_one_excludes_at_rate_one_minus_q() {
        let (q, population, steps) = (1.0 - 1e-4, 10_000, 2_000);
        let sampler = PoissonSampler::new(q, population).unwrap();
        let mut rng = seeded(13);
        let excluded: usize = (0..steps).map(|_| population - sampler.sample(&mut rng).len()).sum();
        let mean = (1.0 - q) * (population * steps) as f64; // 2000
        assert!((excluded as f64 - mean).abs() < 6.0 * mean.sqrt(), "excluded {excluded} vs {mean}");
    }

    /// An `RngCore` that returns one fixed word, to pin the uniform grid of the gap inversion.
    struct Fixed(u64);

    impl RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0 as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0
        }
        fn fill_bytes(&mut self, dst: &mut [u8]) {
            dst.fill(self.0 as u8)
        }
    }

    /// U takes 53-bit values in (0, 1]: the smallest, 2^-53, gives the longest gap, floor(53 ln 2 /
    /// ln 2) = 53 at q = 1/2 (a 24-bit uniform would stop at 24); the largest, 1, gives gap 0.
    #[test]
    fn gap_inversion_uses_the_53_bit_grid() {
        let sampler = PoissonSampler::new(0.5, 200).unwrap();
        let first = sampler.sample(&mut Fixed(0));
        assert_eq!(&first[..3], &[53, 107, 161]);
        assert_eq!(sampler.sample(&mut Fixed(u64::MAX)), (0..200).collect::<Vec<_>>());
        assert_eq!(uniform_open_closed(&mut Fixed(0)), 2f64.powi(-53));
        assert_eq!(uniform_open_closed(&mut Fixed(u64::MAX)), 1.0);
    }

    #[test]
    fn same_seed_reproduces() {
        let sampler = PoissonSampler::new(0.2, 100).unwrap();
        let (mut a, mut b) = (seeded(14), seeded(14));
        for _ in 0..10 {
            assert_eq!(sampler.sample(&mut a), sampler.sample(&mut b));
        }
    }

    #[test]
    fn rejects_bad_arguments_naming_them() {
        for q in [0.0, -0.1, 1.0 + 1e-12, f64::NAN, f64::INFINITY] {
            let err = PoissonSampler::new(q, 10).unwrap_err();
            assert!(matches!(err, SamplerError::SampleRate { .. }), "{q}");
            assert!(err.to_string().contains("sample_rate"));
        }
        let err = PoissonSampler::new(0.5, 0).unwrap_err();
        assert_eq!(err, SamplerError::Population { population: 0 });
        assert!(err.to_string().contains("population"));
        let err = plan_passes(&[1, 2], |_| 1, 0).unwrap_err();
        assert_eq!(err, SamplerError::MaxPhysical { max_physical: 0 });
        assert!(err.to_string().contains("max_physical"));
        assert!(PoissonSampler::new(f64::MIN_POSITIVE, 1).is_ok());
    }

    fn units(passes: &[Pass]) -> Vec<Vec<usize>> {
        passes.iter().map(|p| match p {
            Pass::Units(u) => u.clone(),
            Pass::Split { unit, .. } => vec![*unit],
        }).collect()
    }

    #[test]
    fn example_level_batches_chunk_in_order() {
        let indices: Vec<usize> = (0..10).map(|i| i * 3).collect();
        let chunks = plan_passes(&indices, |_| 1, 4).unwrap();
        assert_eq!(units(&chunks), vec![vec![0, 3, 6, 9], vec![12, 15, 18, 21], vec![24, 27]]);
        assert!(chunks.iter().all(|p| matches!(p, Pass::Units(_))));
        assert_eq!(units(&plan_passes(&indices, |_| 1, 10).unwrap()), vec![indices.clone()]);
        assert_eq!(plan_passes(&indices, |_| 1, 100).unwrap().len(), 1);
        assert!(plan_passes(&[], |_| 1, 4).unwrap().is_empty());
    }

    /// Every unit appears exactly once; a packed pass holds at most `max` padded sequences; only
    /// units larger than `max` are split; units are packed largest first.
    #[test]
    fn user_level_batches_pack_within_the_bound_and_split_large_units() {
        let sizes = [50usize, 1, 3, 4, 2, 2, 7, 1, 1, 5, 9, 4];
        let batch: Vec<usize> = (0..sizes.len()).collect();
        for max in [1, 2, 4, 5, 8, 16, 64] {
            let passes = plan_passes(&batch, |u| sizes[u], max).unwrap();
            let mut seen: Vec<usize> = units(&passes).concat();
            seen.sort();
            assert_eq!(seen, batch, "max {max}");
            for p in &passes {
                match p {
                    Pass::Units(us) => {
                        let largest = us.iter().map(|&u| sizes[u]).max().unwrap();
                        assert!(us.len() * largest <= max, "max {max}: {us:?} pads to {} sequences", us.len() * largest);
                    }
                    Pass::Split { unit, sequences } => assert!(*sequences == sizes[*unit] && *sequences > max, "max {max}: split {unit}"),
                }
            }
        }
        // Largest first: with max 8 the units of 7 and 5 go alone, the 4s go together.
        let passes = plan_passes(&batch, |u| sizes[u], 8).unwrap();
        assert_eq!(passes[0], Pass::Split { unit: 0, sequences: 50 });
        assert_eq!(passes[1], Pass::Split { unit: 10, sequences: 9 });
        assert_eq!(&passes[2..5], &[Pass::Units(vec![6]), Pass::Units(vec![9]), Pass::Units(vec![3, 11])]);
    }

    #[test]
    fn accessors_and_expected_batch_size() {
        let sampler = PoissonSampler::new(0.01, 60_000).unwrap();
        assert_eq!(sampler.sample_rate(), 0.01);
        assert_eq!(sampler.population(), 60_000);
        assert!((sampler.expected_batch_size() - 600.0).abs() < 1e-9);
    }
}
