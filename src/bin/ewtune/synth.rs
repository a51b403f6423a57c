//! `ewtune synth --dir DIR`: makes a small base model (random GPT-2 weights, a byte-level BPE
//! tokenizer), a small synthetic sensitive dataset, labelled texts for a membership audit and a job.toml, so a fresh machine with no
//! downloads can run a real DP fine-tuning job end to end.

use ewtune::train::synthetic::{write_model, write_notes, Family, Shape};
use std::path::PathBuf;

/// The tokenizer of the committed fixture (byte-level BPE, vocab 400), embedded in the binary.
const TOKENIZER: &[u8] = include_bytes!("../../../tests/fixtures/audit/tokenizer.json");

/// Arguments of `ewtune synth`.
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Directory to create (base/, train.jsonl, eval.jsonl, audit_texts.jsonl, job.toml).
    #[arg(long)]
    dir: PathBuf,
    /// Training examples (each one privacy unit).
    #[arg(long, default_value_t = 2000)]
    examples: usize,
}

pub fn run(args: SynthArgs) -> Result<(), Box<dyn std::error::Error>> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir)?;
    let tok = dir.join("tokenizer.json");
    std::fs::write(&tok, TOKENIZER)?;
    let shape = Shape { vocab: 400, d_model: 64, layers: 2, heads: 4, kv_heads: 4, positions: 64 };
    write_model(&dir.join("base"), Family::Gpt2, shape, 0, Some(&tok))?;
    write_notes(&dir.join("train.jsonl"), args.examples, 0, 1)?;
    write_notes(&dir.join("eval.jsonl"), 300, 0, 2)?;
    write_audit_texts(dir, 200)?;
    std::fs::write(
        dir.join("job.toml"),
        r#"# A DP fine-tuning job on the synthetic clinical notes (made by `ewtune synth`).
model = "base"
data = "train.jsonl"
eval_data = "eval.jsonl"
output = "out"
device = "auto"

[finetune]
mode = "full"

[privacy]
epsilon = 4.0        # sigma is calibrated so the certified epsilon is at most this
delta = 1e-5
clip_norm = 1.0

[training]
batch_size = 100     # expected (Poisson) logical batch
epochs = 3
micro_batch = 50
learning_rate = 3e-3
schedule = "linear"
checkpoint_every = 10

[data_format]
max_length = 48
"#,
    )?;
    println!("wrote {}", dir.display());
    Ok(())
}

/// `audit_texts.jsonl`: `n` training lines (label 1) and `n` held-out lines (label 0), the
/// `{"input", "label"}` lines `ewtune score --texts` and `ewtune audits create --texts` read.
fn write_audit_texts(dir: &std::path::Path, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = String::new();
    for (file, label) in [("train.jsonl", 1), ("eval.jsonl", 0)] {
        for line in std::fs::read_to_string(dir.join(file))?.lines().take(n) {
            let text = serde_json::from_str::<serde_json::Value>(line)?["text"].as_str().unwrap_or_default().to_string();
            out.push_str(&serde_json::json!({ "input": text, "label": label }).to_string());
            out.push('\n');
        }
    }
    std::fs::write(dir.join("audit_texts.jsonl"), out)?;
    Ok(())
}
