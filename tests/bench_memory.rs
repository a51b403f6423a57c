//! `ewtune bench memory`'s hidden child subcommand through the real binary: its JSON line parses,
//! and bf16 lowers the peak resident set of a LoRA step, where the frozen weights dominate.
//! Memory only, never time. The figures compared are the step's (from the end of loading, as
//! the child resets its peak there) and the resident set after loading: the whole-process peak
//! of a LoRA run is set by the loader's transient copy of the file, the same in both precisions.

use ewtune::train::bench::{memory_run_in_child, MemoryMode, MemoryRun, MemorySettings};
use ewtune::train::precision::Precision;
use ewtune::train::synthetic::{write_qwen2, Qwen2Shape};
use std::path::Path;

#[test]
fn bf16_lowers_the_peak_memory_of_a_lora_dp_step_by_about_its_frozen_weights() {
    let dir = tempfile::tempdir().unwrap();
    // Qwen2.5-0.5B's widths in 4 layers with a 32k vocabulary: 88 M parameters, all frozen but
    // LoRA's 90 k (f32: 352 MB of frozen weights, bf16: 176 MB).
    let shape = Qwen2Shape { layers: 4, vocab: 32000, ..Qwen2Shape::QWEN25_0_5B };
    write_qwen2(dir.path(), shape, 0).unwrap();
    let settings = MemorySettings { seq_len: 16, micro_batch: 2, steps: 1, threads: 1, pin_mmap_threshold: true };
    let exe = Path::new(env!("CARGO_BIN_EXE_ewtune"));
    let run = |p: Precision| -> MemoryRun { memory_run_in_child(exe, dir.path(), MemoryMode::Lora, p, settings).unwrap_or_else(|e| panic!("{p:?}: {e}")) };
    let (f32, bf16) = (run(Precision::F32), run(Precision::Bf16));
    for r in [&f32, &bf16] {
        assert_eq!((r.mode, r.micro_batch, r.seq_len, r.step_s.len()), (MemoryMode::Lora, 2, 16, 1));
        // q_proj and v_proj of 4 layers at rank 8: A [8, 896] and B [896, 8] / [128, 8].
        assert_eq!(r.trainable_params, 4 * (8 * (896 + 896) + 8 * (896 + 128)));
        assert_eq!(r.frozen_params, shape.params() as usize, "LoRA leaves every base weight frozen");
        assert!(r.peak_rss_bytes >= r.load_peak_rss_bytes && r.load_peak_rss_bytes >= r.rss_after_load_bytes);
        assert!(r.step_s[0] > 0.0);
    }
    assert_eq!((f32.precision, bf16.precision), (Precision::F32, Precision::Bf16));
    assert_eq!(f32.frozen_params, bf16.frozen_params);
    assert_eq!(f32.frozen_bytes, 2 * bf16.frozen_bytes, "frozen weights are held in bf16");
    let expected = (f32.frozen_bytes - bf16.frozen_bytes) as f64;
    let step_peak = |r: &MemoryRun| r.step_peak_rss_bytes.unwrap_or(r.peak_rss_bytes) as f64;
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let (saved_step, saved_loaded) = (step_peak(&f32) - step_peak(&bf16), f32.rss_after_load_bytes as f64 - bf16.rss_after_load_bytes as f64);
    eprintln!(
        "step peaks: f32 {:.0} MiB, bf16 {:.0} MiB; after loading: f32 {:.0} MiB, bf16 {:.0} MiB; frozen weights: {:.0} MiB less in bf16",
        mib(step_peak(&f32)),
        mib(step_peak(&bf16)),
        mib(f32.rss_after_load_bytes as f64),
        mib(bf16.rss_after_load_bytes as f64),
        mib(expected)
    );
    // Generous margins: at least half of the 176 MB the frozen weights account for.
    assert!(
        saved_step > 0.5 * expected && step_peak(&bf16) < 0.9 * step_peak(&f32),
        "step peaks: f32 {:.0} MiB, bf16 {:.0} MiB; saved {:.0} MiB of the {:.0} MiB expected",
        mib(step_peak(&f32)),
        mib(step_peak(&bf16)),
        mib(saved_step),
        mib(expected)
    );
    assert!(saved_loaded > 0.5 * expected, "after loading: saved {:.0} MiB of the {:.0} MiB expected", mib(saved_loaded), mib(expected));
}
