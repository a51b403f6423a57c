//! `ewtune bench ...`: benchmarks that print figures (never asserted in tests).

use ewtune::train::bench::{dp_step, BenchShape};
use ewtune::train::job::DeviceChoice;

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// DP step time over non-private step time, LoRA and full fine-tuning, same model and batch.
    DpStep {
        /// Transformer blocks.
        #[arg(long, default_value_t = 12)]
        layers: i64,
        /// Model width.
        #[arg(long, default_value_t = 768)]
        d_model: i64,
        /// Attention heads.
        #[arg(long, default_value_t = 12)]
        heads: i64,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq_len: i64,
        /// Sequences per batch.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Vocabulary size.
        #[arg(long, default_value_t = 50257)]
        vocab: i64,
        /// Timed repeats (after one warm-up).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Device.
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
        /// libtorch intra-op threads (0: libtorch's default).
        #[arg(long, default_value_t = 0)]
        threads: i32,
        /// One JSON object per mode per line.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: BenchCommand) -> Result<(), Box<dyn std::error::Error>> {
    match cmd {
        BenchCommand::DpStep { layers, d_model, heads, seq_len, batch, vocab, repeats, device, threads, json } => {
            if threads > 0 {
                tch::set_num_threads(threads);
            }
            let shape = BenchShape { layers, d_model, heads, seq_len, batch, vocab, repeats: repeats.max(1) };
            for t in dp_step(shape, device.resolve()?)? {
                if json {
                    println!("{}", serde_json::to_string(&t)?);
                } else {
                    println!(
                        "{:<5} dp {:.4}s  non-dp {:.4}s  ratio {:.3}  (noise draw {:.4}s on the noise thread, {} trainable, {})",
                        t.mode, t.dp_step_s, t.nondp_step_s, t.ratio, t.noise_draw_s, t.trainable_params, t.device
                    );
                }
            }
            Ok(())
        }
    }
}
