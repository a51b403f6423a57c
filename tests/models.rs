//! HF parity: our GPT-2 (and Llama) forward reproduces transformers' per-token log-probs on the
//! committed fixtures, and the tokenizer reproduces its ids.

use crate::util::fixture;
use ewtune::train::finetune::FineTune;
use ewtune::train::model::{token_logprobs, Model};
use tch::{Device, Tensor};

#[derive(serde::Deserialize)]
struct Reference {
    input: String,
    ids: Vec<i64>,
    token_logprobs: Vec<f64>,
}

fn references(path: &std::path::Path) -> Vec<Reference> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn check_parity(dir: &std::path::Path, refs_file: &str) {
    let model = Model::load(dir, &FineTune::Full, None, Device::Cpu).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let _no_grad = tch::no_grad_guard();
    let mut worst = 0.0f64;
    for r in references(&dir.join(refs_file)) {
        let enc = tokenizer.encode(r.input.as_str(), false).unwrap();
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        assert_eq!(ids, r.ids, "tokenizer ids differ for {:?}", r.input);
        let t = Tensor::from_slice(&ids).unsqueeze(0);
        let lp = token_logprobs(&model.forward(&t, None), &t).squeeze_dim(0);
        let got: Vec<f64> = Vec::<f64>::try_from(&lp).unwrap();
        assert_eq!(got.len(), r.token_logprobs.len());
        for (g, w) in got.iter().zip(&r.token_logprobs) {
            worst = worst.max((g - w).abs());
        }
    }
    assert!(worst < 1e-4, "max |log-prob difference| = {worst:e}");
    eprintln!("{}: max |log-prob difference| vs transformers = {worst:.2e}", dir.display());
}

#[test]
fn gpt2_logprobs_match_transformers() {
    check_parity(&fixture("audit"), "reference_scores.jsonl");
}

#[test]
fn llama_logprobs_match_transformers() {
    check_parity(&fixture("tiny-llama"), "reference_logprobs.jsonl");
}
