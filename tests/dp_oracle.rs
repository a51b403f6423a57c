//! The DP clipping engine against the naive oracle (one backward per privacy unit): per-unit
//! norms and the clipped sum agree to 1e-5 relative, for every model family (LoRA on all linear
//! layers and full fine-tuning, which trains per-head q/k norms, Gemma's (1 + w) norms, fused
//! projections), per-sequence and per-user units, with padding and completion-only masks, and
//! for users with more examples than a micro-batch holds (split over several passes).

use ewtune::train::data::{Dataset, Example};
use ewtune::train::dpsgd::{clip_and_accumulate, naive_clipped_sum, ClippedSum, MicroBatch};
use ewtune::train::finetune::FineTune;
use ewtune::train::job;
use ewtune::train::model::Model;
use ewtune::train::synthetic::{write_model, Family, Shape};
use ewtune::train::tape::Units;
use tch::{Device, Kind, Tensor};

fn model(family: Family, ft: &FineTune, dir: &std::path::Path) -> Model {
    let shape = Shape { vocab: 50, d_model: 16, layers: 2, heads: 4, kv_heads: 2, positions: 32 };
    write_model(dir, family, shape, 7, None).unwrap();
    randomised_lora(Model::load(dir, ft, None, Device::Cpu).unwrap())
}

fn randomised_lora(m: Model) -> Model {
    // LoRA B starts at zero (PEFT init), which would make A's gradients vanish: randomise it.
    tch::manual_seed(11);
    for (name, mut p) in m.trainable() {
        if name.ends_with("lora_B.weight") {
            tch::no_grad(|| p.copy_(&(Tensor::randn_like(&p) * 0.3)));
        }
    }
    m
}

fn batch() -> (Tensor, Tensor) {
    tch::manual_seed(3);
    let ids = Tensor::randint(50, [5, 12], (Kind::Int64, Device::Cpu));
    let mask = Tensor::ones([5, 12], (Kind::Int64, Device::Cpu));
    // Row 1 is padded after 7 tokens, row 3 only trains on its completion (from token 6).
    let _ = mask.get(1).narrow(0, 7, 5).fill_(0);
    let _ = mask.get(3).narrow(0, 0, 6).fill_(0);
    (ids, mask)
}

fn check(family: Family, ft: FineTune, groups: Option<Vec<Vec<usize>>>) {
    let dir = tempfile::tempdir().unwrap();
    let m = model(family, &ft, dir.path());
    check_model(&m, &format!("{family:?}"), &ft, groups);
}

fn check_model(m: &Model, family: &str, ft: &FineTune, groups: Option<Vec<Vec<usize>>>) {
    let (ids, mask) = batch();
    let clip = 0.05; // small enough that most units are clipped, large enough that some are not
    let (units, groups) = match groups {
        None => (Units::per_sequence(5, Device::Cpu), (0..5).map(|i| vec![i]).collect::<Vec<_>>()),
        Some(g) => (Units::grouped(&g, 5, Device::Cpu), g),
    };
    let mb = MicroBatch { ids, loss_mask: mask, units };
    let mut acc = ClippedSum::new(m);
    let norms = Vec::<f64>::try_from(&clip_and_accumulate(m, &mb, clip, &mut acc).unwrap().to_kind(Kind::Double)).unwrap();
    let (oracle_norms, oracle_sums) = naive_clipped_sum(m, &mb, &groups, clip);
    for (n, o) in norms.iter().zip(&oracle_norms) {
        assert!((n - o).abs() <= 1e-5 * o.abs(), "{family} {ft:?}: norm {n} vs oracle {o}");
    }
    assert!(norms.iter().any(|&n| n > clip) && norms.iter().all(|&n| n > 0.0), "{norms:?}");
    for ((name, _, sum), want) in acc.entries.iter().zip(&oracle_sums) {
        let err = (sum - want).norm().double_value(&[]);
        let scale = want.norm().double_value(&[]);
        assert!(err <= 1e-5 * scale.max(1e-12), "{family} {ft:?}: {name}: |diff| {err:e} vs |sum| {scale:e}");
    }
}

fn lora() -> FineTune {
    FineTune::lora(4, 8.0, vec![])
}

#[test]
fn gpt2_lora_matches_oracle() {
    check(Family::Gpt2, lora(), None);
}

#[test]
fn gpt2_full_matches_oracle() {
    check(Family::Gpt2, FineTune::Full, None);
}

#[test]
fn llama_lora_matches_oracle() {
    check(Family::Llama, FineTune::lora(4, 8.0, vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]), None);
}

#[test]
fn llama_full_matches_oracle() {
    check(Family::Llama, FineTune::Full, None);
}

#[test]
fn user_level_units_match_oracle() {
    let users = Some(vec![vec![0, 3], vec![1], vec![2, 4]]);
    check(Family::Gpt2, FineTune::Full, users.clone());
    check(Family::Llama, lora(), users);
}

/// Users of 50, 6, 4, 3, 1 and 1 examples (random tokens, 4 to 12 long, some trained on a
/// completion only).
fn users() -> Dataset {
    tch::manual_seed(5);
    let sizes = [50usize, 3, 1, 4, 1, 6];
    let mut k = 0i64;
    let units = sizes
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    k += 1;
                    let len = 4 + (k * 7 % 9);
                    let ids = Vec::<i64>::try_from(&Tensor::randint(50, [len], (Kind::Int64, Device::Cpu))).unwrap();
                    let prompt = if k % 3 == 0 { 2 } else { 1 };
                    let loss_mask = (0..len).map(|t| i64::from(t >= prompt)).collect();
                    Example { ids, loss_mask }
                })
                .collect()
        })
        .collect();
    Dataset { units, dropped_examples: 0, truncated_examples: 0 }
}

/// A user with 50 examples and a micro-batch of 4: no forward pass takes more than 4 sequences
/// (the user's go through 13 passes, gradient accumulated), yet every user's norm and the
/// clipped sum equal the oracle's, which runs each user's examples in one forward and backward
/// (1e-5 relative, as above). A micro-batch of 64 packs the small users together instead.
/// The micro-batch rows of each unit when the whole dataset is one batch, in unit order.
fn unit_rows(data: &Dataset) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for u in &data.units {
        let start = groups.iter().map(Vec::len).sum::<usize>();
        groups.push((start..start + u.len()).collect());
    }
    groups
}

#[test]
fn a_user_larger_than_the_micro_batch_is_clipped_exactly_within_it() {
    for (family, ft) in [(Family::Gpt2, FineTune::Full), (Family::Llama, lora())] {
        let dir = tempfile::tempdir().unwrap();
        let m = model(family, &ft, dir.path());
        let data = users();
        let batch: Vec<usize> = (0..data.len()).collect();
        let everything = data.micro_batch(&batch, Device::Cpu);
        let groups = unit_rows(&data);
        // A clip norm between the smallest and largest unit norm: some units clip, some do not.
        let (norms, _) = naive_clipped_sum(&m, &everything, &groups, 1.0);
        let (lo, hi) = norms.iter().fold((f64::MAX, 0f64), |(lo, hi), &n| (lo.min(n), hi.max(n)));
        assert!(lo < hi && norms[0] == hi, "the 50-example user has the largest norm: {norms:?}");
        let clip = (lo * hi).sqrt();
        let (oracle_norms, oracle_sums) = naive_clipped_sum(&m, &everything, &groups, clip);
        for micro in [4, 64] {
            let (acc, stats) = job::clipped_sum(&m, &data, &batch, clip, micro, Device::Cpu).unwrap();
            assert!(stats.peak_sequences <= micro && stats.peak_unit_slots <= micro, "{family:?} micro {micro}: {stats:?}");
            if micro == 4 {
                assert!(stats.passes >= 13 + 3, "{family:?}: 13 passes for the large user, 3 or more for the rest: {stats:?}");
            }
            assert_eq!(stats.norms.len(), data.len());
            for &(u, n) in &stats.norms {
                let o = oracle_norms[u];
                assert!((n - o).abs() <= 1e-5 * o, "{family:?} micro {micro}: unit {u} norm {n} vs oracle {o}");
            }
            assert_eq!(stats.clipped, oracle_norms.iter().filter(|&&n| n > clip).count());
            assert_eq!(acc.units, data.len());
            for ((name, _, sum), want) in acc.entries.iter().zip(&oracle_sums) {
                let err = (sum - want).norm().double_value(&[]);
                let scale = want.norm().double_value(&[]);
                assert!(err <= 1e-5 * scale.max(1e-12), "{family:?} micro {micro}: {name}: |diff| {err:e} vs |sum| {scale:e}");
            }
        }
    }
}

#[test]
fn every_family_matches_oracle_lora_all_linear_and_full() {
    // Checkpoints transformers saved (tests/fixtures/models): sliding windows, soft-capping,
    // partial rotary, parallel residuals and per-head norms all sit between the loss and the
    // trainable tensors here.
    for name in ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3-partial-rotary", "gpt-neox", "gpt2-untied", "llama3-rope"] {
        let dir = crate::util::fixture("models").join(name);
        for ft in [FineTune::lora(2, 4.0, vec!["all-linear".into()]), FineTune::Full] {
            let m = randomised_lora(Model::load(&dir, &ft, None, Device::Cpu).unwrap());
            check_model(&m, name, &ft, Some(vec![vec![0, 2], vec![1], vec![3, 4]]));
        }
    }
}

/// The DP step in bf16 (bf16 weights and activations, f32 master parameters, norms and clipped
/// sums computed in f32) against the same step in f32 on the same checkpoint and batch: per-unit
/// norms within 3 % and every clipped sum within 10 % (relative L2). bf16 keeps 8 mantissa bits
/// (relative rounding 2^-9 = 0.2 % per operation); the activations and output gradients carry
/// that through two layers' forward and backward (measured: norms 1.3 %, sums 5.3 % for LoRA).
/// The privacy guarantee does not depend on this: each unit's clipped contribution is computed
/// from its own (bf16) gradient and bounded by C in f32 either way.
#[test]
fn the_bf16_step_agrees_with_the_f32_step() {
    use ewtune::train::precision::Precision;
    let dir = crate::util::fixture("models").join("qwen3");
    for ft in [FineTune::lora(4, 8.0, vec!["all-linear".into()]), FineTune::Full] {
        let run = |p: Precision| {
            tch::manual_seed(0); // the same LoRA A draw for both precisions
            let m = randomised_lora(Model::load_with(&dir, &ft, None, Device::Cpu, p).unwrap());
            let (ids, mask) = batch();
            let mb = MicroBatch { ids, loss_mask: mask, units: Units::per_sequence(5, Device::Cpu) };
            let mut acc = ClippedSum::new(&m);
            let norms = Vec::<f64>::try_from(&clip_and_accumulate(&m, &mb, 0.05, &mut acc).unwrap().to_kind(Kind::Double)).unwrap();
            let sums: Vec<(String, Tensor)> = acc.entries.iter().map(|(n, _, s)| (n.clone(), s.shallow_clone())).collect();
            (norms, sums)
        };
        let (n32, s32) = run(Precision::F32);
        let (n16, s16) = run(Precision::Bf16);
        let mut worst_norm = 0.0f64;
        for (a, b) in n32.iter().zip(&n16) {
            worst_norm = worst_norm.max((a - b).abs() / a);
        }
        let mut worst_sum = 0.0f64;
        for ((name, a), (_, b)) in s32.iter().zip(&s16) {
            assert_eq!(b.kind(), Kind::Float, "{name}: clipped sums are f32");
            let rel = (a - b).norm().double_value(&[]) / a.norm().double_value(&[]).max(1e-12);
            worst_sum = worst_sum.max(rel);
        }
        eprintln!("bf16 vs f32 DP step ({ft:?}): worst norm {worst_norm:.2e}, worst clipped sum {worst_sum:.2e} (relative)");
        assert!(worst_norm < 0.03 && worst_sum < 0.10, "{ft:?}: norm {worst_norm:e}, sum {worst_sum:e}");
    }
}

/// A token that the clean sequences below never hold; [`poison`] sets its input embedding to
/// infinity, so a sequence holding it has non-finite activations, loss and gradients (Llama's
/// head is untied: no other sequence reads that embedding row).
const POISON: i64 = 49;

fn poison(m: &Model) {
    let (_, e) = m.named_tensors().into_iter().find(|(n, _)| n.ends_with("embed_tokens.weight")).expect("a Llama input embedding");
    tch::no_grad(|| {
        let _ = e.get(POISON).fill_(f64::INFINITY);
    });
}

fn assert_sums_match(got: &[(String, Tensor, Tensor)], want: &[Tensor], what: &str) {
    for ((name, _, sum), want) in got.iter().zip(want) {
        assert_eq!(sum.isfinite().all().int64_value(&[]), 1, "{what}: {name}: the clipped sum is not finite");
        let err = (sum - want).norm().double_value(&[]);
        let scale = want.norm().double_value(&[]);
        assert!(scale > 0.0 && err <= 1e-5 * scale, "{what}: {name}: |diff| {err:e} vs |sum of the other units| {scale:e}");
    }
}

/// Issue 11 (4): a unit whose gradient is not finite adds nothing to the clipped sum; before,
/// its zero clip factor multiplied its NaN gradient (0 x NaN = NaN) and the whole sum was NaN.
/// Book-keeping path (materialised and ghost linear layers, LoRA, norms): the sum equals the
/// naive oracle's over the other units alone, per sequence and per user (the poisoned row's
/// user, a clean row included, is left out whole).
#[test]
fn a_unit_with_a_non_finite_gradient_adds_nothing_to_the_clipped_sum() {
    for ft in [lora(), FineTune::Full] {
        let dir = tempfile::tempdir().unwrap();
        let m = model(Family::Llama, &ft, dir.path());
        poison(&m);
        let (_, mask) = batch();
        tch::manual_seed(3);
        let ids = Tensor::randint(POISON, [5, 12], (Kind::Int64, Device::Cpu));
        let _ = ids.get(2).get(5).fill_(POISON);
        for (groups, poisoned) in [((0..5).map(|i| vec![i]).collect::<Vec<_>>(), 2), (vec![vec![0, 3], vec![1], vec![2, 4]], 2)] {
            let units = if groups.len() == 5 { Units::per_sequence(5, Device::Cpu) } else { Units::grouped(&groups, 5, Device::Cpu) };
            let mb = MicroBatch { ids: ids.copy(), loss_mask: mask.copy(), units };
            let mut acc = ClippedSum::new(&m);
            let clip = 0.05;
            let norms = Vec::<f64>::try_from(&clip_and_accumulate(&m, &mb, clip, &mut acc).unwrap().to_kind(Kind::Double)).unwrap();
            for (u, n) in norms.iter().enumerate() {
                assert_eq!(n.is_finite(), u != poisoned, "{ft:?} {groups:?}: norms {norms:?}");
            }
            let kept: Vec<Vec<usize>> = groups.iter().enumerate().filter(|&(u, _)| u != poisoned).map(|(_, g)| g.clone()).collect();
            let (oracle_norms, oracle_sums) = naive_clipped_sum(&m, &mb, &kept, clip);
            assert!(oracle_norms.iter().all(|n| n.is_finite()) && oracle_norms.iter().any(|&n| n > clip), "{oracle_norms:?}");
            assert_sums_match(&acc.entries, &oracle_sums, &format!("{ft:?} units {groups:?}"));
        }
    }
}

/// Users of 50, 3, 1, 4, 1 and 6 examples ([`users`]) with a poisoned example in user `u`.
fn poisoned_users(u: usize) -> Dataset {
    let mut data = users();
    for unit in &mut data.units {
        for ex in unit.iter_mut() {
            for id in ex.ids.iter_mut() {
                *id = id.rem_euclid(POISON);
            }
        }
    }
    let ex = &mut data.units[u][0];
    let last = ex.ids.len() - 2;
    ex.ids[last] = POISON;
    data
}

/// Issue 11 (4), the job's whole clipped sum and DP step: a poisoned user, whether split over
/// passes (`clip_and_accumulate_unit`: the 50-example user at micro-batch 4) or packed with
/// other users on the tape (the 3-example user at micro-batch 64), is left out (counted in `ClipStats::excluded`, not in `clipped`), the
/// sum equals the oracle's over the other users, and the noisy update of `private_step` is
/// finite and moves every trainable tensor.
#[test]
fn a_non_finite_unit_leaves_the_clipped_sum_and_the_noisy_update_finite() {
    for ft in [lora(), FineTune::Full] {
        for (poisoned, micro) in [(0, 4), (1, 64)] {
            let what = format!("{ft:?} poisoned user {poisoned}, micro-batch {micro}");
            let dir = tempfile::tempdir().unwrap();
            let m = model(Family::Llama, &ft, dir.path());
            poison(&m);
            let data = poisoned_users(poisoned);
            let batch: Vec<usize> = (0..data.len()).collect();
            let everything = data.micro_batch(&batch, Device::Cpu);
            let groups = unit_rows(&data);
            let kept: Vec<Vec<usize>> = groups.iter().enumerate().filter(|&(u, _)| u != poisoned).map(|(_, g)| g.clone()).collect();
            let clip = 0.5;
            let (_, oracle_sums) = naive_clipped_sum(&m, &everything, &kept, clip);
            let (acc, stats) = job::clipped_sum(&m, &data, &batch, clip, micro, Device::Cpu).unwrap();
            assert_eq!(stats.excluded, 1, "{what}: {stats:?}");
            assert!(stats.norms.iter().all(|&(u, n)| n.is_finite() == (u != poisoned)), "{what}: {stats:?}");
            assert_eq!(acc.units, data.len());
            assert_sums_match(&acc.entries, &oracle_sums, &what);

            // The full step: clipped sum, Gaussian noise, division by q N, SGD update.
            let params: Vec<Tensor> = m.trainable().into_iter().map(|(_, p)| p).collect();
            let before: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
            let mut opt = ewtune::train::optim::Optimizer::new(
                ewtune::train::optim::OptimizerKind::Sgd { momentum: 0.0 },
                0.1,
                ewtune::train::optim::Schedule::Constant,
                1,
                &params,
            );
            let numel: usize = params.iter().map(|p| p.numel()).sum();
            let mut noise = vec![0f32; numel];
            ewtune::train::noise::NoiseSource::seeded_for_tests(5).fill_gaussian(clip, &mut noise);
            let privacy = job::PrivacySpec { epsilon: None, noise_multiplier: Some(1.0), delta: 1e-5, clip_norm: clip };
            let stats = job::private_step(&m, &data, &batch, &privacy, micro, &noise, 4.0, &mut opt, &params, Device::Cpu, None).unwrap();
            assert_eq!(stats.excluded, 1, "{what}");
            for ((name, p), b) in m.trainable().iter().zip(&before) {
                assert_eq!(p.isfinite().all().int64_value(&[]), 1, "{what}: {name} is not finite after the DP step");
                assert!(p.ne_tensor(b).any().int64_value(&[]) == 1, "{what}: {name} did not move");
            }
        }
    }
}
