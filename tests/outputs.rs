//! What a job hands over: PEFT adapter and transformers checkpoint directories with exactly the
//! expected files (no config.json beside an adapter, the base named by its canonical path, a
//! bf16 base kept bf16, a sharded checkpoint indexed as transformers indexes it), written in one
//! rename; the client's download check refusing every kind of bad stream; the daemon's
//! Jobs.GetArtifacts, budget report and `ewtune jobs download` / `jobs watch` over real gRPC;
//! and transformers and PEFT themselves loading the outputs (Python, the project venv) with the
//! same log-probs as ewtune.

use crate::daemon::{client, register, spec, Daemon};
use crate::util::fixture;
use ewtune::api::pb;
use ewtune::artifacts::{list_files, Download, DownloadError, OutputFile};
use ewtune::train::finetune::{FineTune, Targets};
use ewtune::train::job::{self, JobSpec};
use ewtune::train::model::{token_logprobs, Model};
use ewtune::train::output::{self, AdapterConfig, Output};
use ewtune::train::peft_adapter::{load_trained, AdapterBase};
use ewtune::train::synthetic::{write_model, write_notes, Family, Shape};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor};
use tonic::Code;

/// Copies a fixture's model files (config, weights, tokenizer and generation config) into `dir`;
/// with `bf16`, the weights are converted to bfloat16 and config.json says so, as a bf16
/// checkpoint saved by transformers does.
fn base_from_fixture(fixture_dir: &Path, dir: &Path, bf16: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        if fixture_dir.join(f).exists() {
            std::fs::copy(fixture_dir.join(f), dir.join(f)).unwrap();
        }
    }
    let tensors = Tensor::read_safetensors(fixture_dir.join("model.safetensors")).unwrap();
    if !bf16 {
        std::fs::copy(fixture_dir.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
        return;
    }
    let converted: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (n, t.to_kind(Kind::BFloat16))).collect();
    Tensor::write_safetensors(&converted, dir.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    config["dtype"] = "bfloat16".into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// A job.toml in `root` training `model` (as written: relative to `root`) on 300 synthetic
/// notes for two steps, read back as `ewtune train` reads it.
fn job_spec(root: &Path, model: &str, finetune: &str) -> JobSpec {
    write_notes(&root.join("train.jsonl"), 300, 0, 1).unwrap();
    let toml = format!(
        "model = \"{model}\"\ndata = \"train.jsonl\"\noutput = \"out\"\ndevice = \"cpu\"\n\
         [finetune]\n{finetune}\n\
         [privacy]\nnoise_multiplier = 1.0\ndelta = 1e-5\n\
         [training]\nbatch_size = 30\nsteps = 2\nmicro_batch = 15\nlearning_rate = 1e-2\ncheckpoint_every = 5\n\
         [data_format]\nmax_length = 32\n"
    );
    std::fs::write(root.join("job.toml"), toml).unwrap();
    JobSpec::from_toml_file(&root.join("job.toml")).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    n.sort();
    n
}

/// `(dtype, metadata)` of every tensor in a safetensors file, from its header.
fn header(path: &Path) -> (BTreeMap<String, String>, serde_json::Value) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = h.get("__metadata__").cloned().unwrap_or_default();
    let dtypes = h.into_iter().filter(|(k, _)| k != "__metadata__").map(|(k, v)| (k, v["dtype"].as_str().unwrap().to_string())).collect();
    (dtypes, meta)
}

/// A LoRA run writes PEFT's layout: adapter_config.json naming the base by its canonical
/// absolute path (the job.toml named it by a relative path through `..`), the adapter tensors in
/// float32 with PEFT's names and metadata, the base's tokenizer files, and no config.json.
#[test]
fn lora_output_is_a_peft_adapter_naming_its_base_absolutely() {
    let root = tempfile::tempdir().unwrap();
    base_from_fixture(&fixture("audit"), &root.path().join("base"), false);
    std::fs::create_dir(root.path().join("sub")).unwrap();
    let spec = job_spec(root.path(), "sub/../base", "mode = \"lora\"\nrank = 4\nalpha = 8");
    let out = job::run(&spec, &AtomicBool::new(false), |_| {}).unwrap();
    let dir = &out.output_model;
    assert_eq!(names(dir), ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    assert_eq!(std::fs::read(dir.join("tokenizer.json")).unwrap(), std::fs::read(root.path().join("base/tokenizer.json")).unwrap());
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let recorded = PathBuf::from(cfg["base_model_name_or_path"].as_str().unwrap());
    assert!(recorded.is_absolute(), "{recorded:?}");
    assert_eq!(recorded, std::fs::canonicalize(root.path().join("base")).unwrap());
    assert!(!recorded.to_string_lossy().contains(".."), "{recorded:?}");
    assert_eq!((cfg["r"].as_i64(), cfg["lora_alpha"].as_i64(), cfg["peft_type"].as_str(), cfg["task_type"].as_str()), (Some(4), Some(8), Some("LORA"), Some("CAUSAL_LM")));
    assert_eq!((cfg["fan_in_fan_out"].as_bool(), cfg["inference_mode"].as_bool()), (Some(true), Some(true)));
    assert_eq!(cfg["target_modules"], serde_json::json!(["c_attn"]));
    let (dtypes, meta) = header(&dir.join("adapter_model.safetensors"));
    assert_eq!(meta, serde_json::json!({"format": "pt"}));
    assert_eq!(dtypes.len(), 4, "lora_A and lora_B of c_attn in 2 layers: {dtypes:?}");
    for (name, dtype) in &dtypes {
        assert!(name.starts_with("base_model.model.transformer.h.") && name.contains(".attn.c_attn.lora_"), "{name}");
        assert_eq!(dtype, "F32", "{name}");
    }
    // It loads over the recorded base, from the recorded path alone.
    let model = load_trained(dir, AdapterBase::Recorded, Device::Cpu).unwrap();
    assert_eq!(model.trainable().len(), 4);
    // No staging directory is left beside it; a second write replaces it whole.
    assert_eq!(names(&root.path().join("out")), ["checkpoints", "model", "privacy.json"]);
}

/// A full fine-tune of a bfloat16 base writes bfloat16 weights (the dtype of the base's
/// safetensors headers), config.json and generation_config.json copied, and nothing of PEFT.
#[test]
fn full_output_keeps_a_bf16_base_bf16() {
    let root = tempfile::tempdir().unwrap();
    base_from_fixture(&fixture("audit"), &root.path().join("base"), true);
    let spec = job_spec(root.path(), "base", "mode = \"full\"");
    let out = job::run(&spec, &AtomicBool::new(false), |_| {}).unwrap();
    let dir = &out.output_model;
    assert_eq!(names(dir), ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), std::fs::read(root.path().join("base/config.json")).unwrap());
    let (dtypes, meta) = header(&dir.join("model.safetensors"));
    let (base_dtypes, _) = header(&root.path().join("base/model.safetensors"));
    assert_eq!(meta, serde_json::json!({"format": "pt"}));
    assert_eq!(dtypes.keys().collect::<Vec<_>>(), base_dtypes.keys().collect::<Vec<_>>(), "the same tensors as the base");
    assert!(dtypes.values().all(|d| d == "BF16"), "{dtypes:?}");
    // The trained weights, rounded to bf16, are what was written; the frozen embeddings are the base's bit for bit.
    let written: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().collect();
    let base: BTreeMap<String, Tensor> = Tensor::read_safetensors(root.path().join("base/model.safetensors")).unwrap().into_iter().collect();
    assert!(written["transformer.wte.weight"].equal(&base["transformer.wte.weight"]));
    assert!(!written["transformer.h.0.attn.c_attn.weight"].equal(&base["transformer.h.0.attn.c_attn.weight"]), "trained weights moved");
    Model::load(dir, &FineTune::Full, None, Device::Cpu).unwrap();
}

/// Past max_shard_bytes the weights are split as transformers splits them: shard names
/// `model-0000i-of-0000N.safetensors`, each shard holding exactly the tensors the index maps to
/// it, `metadata.total_size` and `total_parameters` summed over the tensors, tensors in the
/// order transformers saves them. Written again with the default limit, the directory is
/// replaced whole: one `model.safetensors`, no stale shard, no staging directory.
#[test]
fn sharded_full_output_is_indexed_like_transformers() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    base_from_fixture(&fixture("tiny-llama"), &base, false);
    let model = Model::load(&base, &FineTune::Full, None, Device::Cpu).unwrap();
    let tensors = model.named_tensors();
    let dir = root.path().join("out/model");
    let max = 20_000u64;
    output::write(&dir, &base, &tensors, Output::Full { max_shard_bytes: max }).unwrap();
    let files = names(&dir);
    let shards: Vec<&String> = files.iter().filter(|f| f.starts_with("model-")).collect();
    let n = shards.len();
    assert!(n > 2, "{files:?}");
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(**s, format!("model-{:05}-of-{n:05}.safetensors", i + 1));
    }
    assert!(!files.contains(&"model.safetensors".to_string()));
    let index_text = std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap();
    assert!(index_text.ends_with("}\n") && index_text.starts_with("{\n  \"metadata\": {\n    \"total_parameters\": "), "{index_text}");
    let index: serde_json::Value = serde_json::from_str(&index_text).unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    let numel: u64 = tensors.iter().map(|(_, t)| t.numel() as u64).sum();
    assert_eq!(index["metadata"]["total_parameters"].as_u64(), Some(numel));
    assert_eq!(index["metadata"]["total_size"].as_u64(), Some(4 * numel), "float32 base: 4 bytes a parameter");
    assert_eq!(weight_map.len(), tensors.len());
    let mut covered = 0;
    for s in &shards {
        let (dtypes, meta) = header(&dir.join(s));
        assert_eq!(meta, serde_json::json!({"format": "pt"}));
        let mapped: Vec<&String> = weight_map.iter().filter(|(_, f)| f.as_str() == Some(s.as_str())).map(|(k, _)| k).collect();
        assert_eq!(dtypes.keys().collect::<Vec<_>>(), mapped, "{s} holds exactly what the index maps to it");
        let bytes: u64 = Tensor::read_safetensors(dir.join(s)).unwrap().iter().map(|(_, t)| 4 * t.numel() as u64).sum();
        assert!(bytes <= max || dtypes.len() == 1, "{s}: {bytes} bytes");
        covered += dtypes.len();
    }
    assert_eq!(covered, tensors.len());
    // transformers' save order (names sorted by its dot_natural_key): lm_head first, each
    // bigger than a shard, so each in a shard of its own (Python re-saves and compares, below).
    assert_eq!(weight_map["lm_head.weight"], format!("model-00001-of-{n:05}.safetensors"));
    assert_eq!(weight_map["model.embed_tokens.weight"], format!("model-00002-of-{n:05}.safetensors"));

    output::write(&dir, &base, &tensors, Output::Full { max_shard_bytes: output::DEFAULT_MAX_SHARD_BYTES }).unwrap();
    assert_eq!(names(&dir), ["config.json", "model.safetensors", "tokenizer.json"]);
    assert_eq!(names(&root.path().join("out")), ["model"], "no staging directory left");
    let reread: Vec<(String, Tensor)> = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    assert_eq!(reread.len(), tensors.len());
}

/// An adapter naming its base by a bare name (as the daemon's do) loads over a base given
/// explicitly, and otherwise fails naming the problem.
#[test]
fn adapters_named_by_the_daemon_load_over_a_given_base() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    base_from_fixture(&fixture("tiny-llama"), &base, false);
    let ft = FineTune::lora(2, 4.0, vec![]);
    tch::manual_seed(0);
    let model = Model::load(&base, &ft, None, Device::Cpu).unwrap();
    let cfg = AdapterConfig {
        r: 2,
        lora_alpha: 4.0,
        target_modules: Targets::List(vec!["q_proj".into(), "v_proj".into()]),
        use_rslora: false,
        rank_pattern: BTreeMap::new(),
        alpha_pattern: BTreeMap::new(),
        fan_in_fan_out: false,
        base_model_name_or_path: "tiny-llama-on-the-daemon".into(),
    };
    let dir = root.path().join("adapter");
    output::write(&dir, &base, &model.named_tensors(), Output::Adapter(&cfg)).unwrap();
    assert_eq!(names(&dir), ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]);
    let err = load_trained(&dir, AdapterBase::Recorded, Device::Cpu).err().expect("a bare name is no directory here");
    assert!(err.to_string().contains("tiny-llama-on-the-daemon") && err.to_string().contains("base model's directory"), "{err}");
    for how in [AdapterBase::RecordedOr(&base), AdapterBase::Given(&base)] {
        let m = load_trained(&dir, how, Device::Cpu).unwrap();
        assert_eq!(m.trainable().len(), 8, "q and v adapters of 2 layers");
    }
}

fn sha(bytes: &[u8]) -> String {
    ewtune::digest::sha256_hex(bytes)
}

/// The client's check of a download, driven directly: every kind of bad stream is refused with
/// the file and the problem named, and nothing is left on disk; a good one lands whole.
#[test]
fn downloads_are_checked_against_the_recorded_files() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (b"hello".to_vec(), vec![7u8; 10]);
    let recorded = vec![
        OutputFile { path: "a.json".into(), size: 5, sha256: sha(&a) },
        OutputFile { path: "sub/b.bin".into(), size: 10, sha256: sha(&b) },
        OutputFile { path: "empty".into(), size: 0, sha256: sha(b"") },
    ];
    let out = root.path().join("dl");
    let left = || names(root.path());
    type Step<'s> = (&'s str, u64, String, u64, Vec<u8>);
    let good_a: Step = ("a.json", 5, sha(&a), 0, a.clone());
    let run = |steps: &[Step]| -> Result<Vec<OutputFile>, DownloadError> {
        let mut d = Download::start(&out, &recorded)?;
        for (p, size, sha256, offset, data) in steps {
            d.accept(p, *size, sha256, *offset, data)?;
        }
        d.finish()
    };
    let b_whole: Vec<Step> = vec![("sub/b.bin", 10, sha(&b), 0, b[..4].to_vec()), ("sub/b.bin", 10, sha(&b), 4, b[4..].to_vec())];
    let empty: Step = ("empty", 0, sha(b""), 0, vec![]);
    let cases: Vec<(&str, Vec<Step>)> = vec![
        ("corrupt bytes", vec![("a.json", 5, sha(&a), 0, b"hellp".to_vec())]),
        ("unknown file", vec![("c", 1, sha(b"c"), 0, b"c".to_vec())]),
        ("escaping path", vec![("../a.json", 5, sha(&a), 0, a.clone())]),
        ("wrong size claimed", vec![("a.json", 6, sha(&a), 0, a.clone())]),
        ("wrong hash claimed", vec![("a.json", 5, sha(b"x"), 0, a.clone())]),
        ("gap", vec![("sub/b.bin", 10, sha(&b), 0, b[..4].to_vec()), ("sub/b.bin", 10, sha(&b), 5, b[5..].to_vec())]),
        ("too long", vec![("a.json", 5, sha(&a), 0, b"hello!".to_vec())]),
        ("cut short then another file", vec![("sub/b.bin", 10, sha(&b), 0, b[..4].to_vec()), good_a.clone()]),
        ("sent twice", vec![good_a.clone(), good_a.clone()]),
        ("missing file", [vec![good_a.clone()], b_whole.clone()].concat()),
        ("cut short at the end", vec![good_a.clone(), empty.clone(), ("sub/b.bin", 10, sha(&b), 0, b[..4].to_vec())]),
    ];
    for (what, steps) in cases {
        let err = run(&steps).expect_err(what);
        let text = err.to_string();
        assert!(text.contains('"'), "{what}: the message names the file: {text}");
        assert!(left().is_empty(), "{what}: nothing left behind, found {:?}", left());
    }
    let err = run(&[good_a.clone(), empty.clone()]).unwrap_err();
    assert!(matches!(&err, DownloadError::Missing { missing } if missing == &["sub/b.bin".to_string()]), "{err}");
    let got = run(&[[good_a.clone(), empty.clone()].to_vec(), b_whole.clone()].concat()).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(std::fs::read(out.join("a.json")).unwrap(), a);
    assert_eq!(std::fs::read(out.join("sub/b.bin")).unwrap(), b);
    assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
    assert_eq!(left(), ["dl"]);
    // A non-empty target is never written into.
    let err = Download::start(&out, &recorded).err().expect("dl is not empty");
    assert!(matches!(err, DownloadError::NotEmpty { .. }), "{err}");
    // An empty existing directory is fine.
    let empty_dir = root.path().join("empty-dir");
    std::fs::create_dir(&empty_dir).unwrap();
    let mut d = Download::start(&empty_dir, &recorded[2..]).unwrap();
    d.accept("empty", 0, &sha(b""), 0, &[]).unwrap();
    d.finish().unwrap();
    assert_eq!(names(&empty_dir), ["empty"]);
}

/// Reassembles a GetArtifacts stream, checking the chunking contract on the way.
async fn fetch(c: &mut crate::daemon::Client, job: &str) -> Result<BTreeMap<String, Vec<u8>>, tonic::Status> {
    let mut stream = c.jobs.get_artifacts(pb::GetArtifactsRequest { job_id: job.to_string() }).await?.into_inner();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut order = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert!(chunk.data.len() <= ewtune::artifacts::CHUNK_BYTES, "{} bytes in one chunk", chunk.data.len());
        let buf = files.entry(chunk.path.clone()).or_default();
        if buf.is_empty() && chunk.offset == 0 {
            order.push(chunk.path.clone());
        }
        assert_eq!(chunk.offset, buf.len() as u64, "{}: chunks in order", chunk.path);
        buf.extend_from_slice(&chunk.data);
        assert!(buf.len() as u64 <= chunk.size);
        if buf.len() as u64 == chunk.size {
            assert_eq!(sha(buf), chunk.sha256, "{}", chunk.path);
        }
    }
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "files in path order");
    Ok(files)
}

async fn wait(c: &mut crate::daemon::Client, job: &str) -> pb::Job {
    let mut stream = c.jobs.watch(pb::WatchJobRequest { job_id: job.to_string(), after_seq: 0 }).await.unwrap().into_inner();
    while stream.message().await.unwrap().is_some() {}
    c.jobs.get(pb::GetJobRequest { job_id: job.to_string() }).await.unwrap().into_inner()
}

/// Over the real daemon: a LoRA job's adapter names its base by the client's name, a full job's
/// checkpoint streams in 1 MiB chunks; every file's size and SHA-256 is the recorded one (Job,
/// the signed budget report, the stream, the daemon's disk); other tenants, unknown and
/// unfinished jobs get NotFound; `ewtune jobs download` writes and checks the files and refuses
/// a non-empty directory; `ewtune jobs watch` says where the model is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_artifacts_streams_exactly_the_recorded_files() {
    let d = Daemon::start().await;
    let token = d.state.store.create_token("clinic").unwrap();
    let mut c = client(&d.addr, &token).await;
    let mut rival = client(&d.addr, &d.state.store.create_token("rival").unwrap()).await;
    // A wider model, so its checkpoint spans several chunks.
    let wide = Shape { vocab: 400, d_model: 256, layers: 2, heads: 4, kv_heads: 4, positions: 64 };
    write_model(&d.state.config.models_dir.join("wide"), Family::Gpt2, wide, 2, Some(&fixture("audit").join("tokenizer.json"))).unwrap();
    let ds = register(&mut c, 8.0).await;
    let lora = c.jobs.create(spec(&ds.dataset_id, 1.0)).await.unwrap().into_inner();
    let mut full_spec = spec(&ds.dataset_id, 1.0);
    full_spec.base_model = "wide".into();
    full_spec.finetune = Some(pb::job_spec::Finetune::Full(true));
    full_spec.steps = 2;
    let full = c.jobs.create(full_spec).await.unwrap().into_inner();
    // Not finished yet (or at best running): no artifacts.
    let e = c.jobs.get_artifacts(pb::GetArtifactsRequest { job_id: full.job_id.clone() }).await;
    let e = match e {
        Ok(r) => r.into_inner().message().await.unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("only a succeeded job"), "{}", e.message());

    let lora_done = wait(&mut c, &lora.job_id).await;
    let full_done = wait(&mut c, &full.job_id).await;
    assert_eq!(lora_done.state, pb::JobState::Succeeded as i32, "{}", lora_done.reason);
    assert_eq!(full_done.state, pb::JobState::Succeeded as i32, "{}", full_done.reason);
    let paths = |j: &pb::Job| j.artifacts.iter().map(|a| a.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&lora_done), ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json"]);
    assert_eq!(paths(&full_done), ["config.json", "model.safetensors", "tokenizer.json"]);

    for j in [&lora_done, &full_done] {
        let files = fetch(&mut c, &j.job_id).await.unwrap();
        let on_disk = list_files(&d.state.config.data_dir.join("jobs").join(&j.job_id).join("model")).unwrap();
        assert_eq!(files.len(), j.artifacts.len());
        for (a, disk) in j.artifacts.iter().zip(&on_disk) {
            assert_eq!((&a.path, a.size, &a.sha256), (&disk.path, disk.size, &disk.sha256));
            assert_eq!(sha(&files[&a.path]), a.sha256);
        }
        assert_eq!(rival.jobs.get_artifacts(pb::GetArtifactsRequest { job_id: j.job_id.clone() }).await.err().map(|e| e.code()), Some(Code::NotFound));
    }
    let weights = full_done.artifacts.iter().find(|a| a.path == "model.safetensors").unwrap();
    assert!(weights.size > 3 * ewtune::artifacts::CHUNK_BYTES as u64, "{} bytes: several chunks", weights.size);
    let adapter = fetch(&mut c, &lora_done.job_id).await.unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&adapter["adapter_config.json"]).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], "tiny", "the client's name for the base, no daemon path");
    let data_dir = d.state.config.data_dir.to_string_lossy().into_owned();
    assert!(!adapter.values().any(|bytes| String::from_utf8_lossy(bytes).contains(&data_dir)), "no daemon path in any artifact");
    let unknown = "0".repeat(32);
    assert_eq!(c.jobs.get_artifacts(pb::GetArtifactsRequest { job_id: unknown }).await.err().map(|e| e.code()), Some(Code::NotFound));

    // The signed budget report lists each succeeded job's files with their SHA-256.
    let r = c.budget.get(pb::GetBudgetRequest { dataset_id: ds.dataset_id.clone(), charts: false }).await.unwrap().into_inner();
    let signed = ewtune::service::signing::SignedReport::new(r.report_json.clone(), &r.signature, &r.public_key);
    ewtune::service::signing::verify(&signed, Some(&ewtune::digest::hex(&d.state.signer.public_key()))).unwrap();
    let report: serde_json::Value = serde_json::from_str(&r.report_json).unwrap();
    for j in [&lora_done, &full_done] {
        let row = report["jobs"].as_array().unwrap().iter().find(|row| row["job"] == j.job_id.as_str()).unwrap();
        let listed: Vec<(String, String)> = row["outputs"].as_array().unwrap().iter().map(|f| (f["path"].as_str().unwrap().into(), f["sha256"].as_str().unwrap().into())).collect();
        let recorded: Vec<(String, String)> = j.artifacts.iter().map(|a| (a.path.clone(), a.sha256.clone())).collect();
        assert_eq!(listed, recorded);
    }

    // The CLI: download checks and writes; a second download into the same directory is refused.
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("model");
    let (addr, tok) = (d.addr.clone(), token.clone());
    let cli = move |args: Vec<String>| {
        let (addr, tok) = (addr.clone(), tok.clone());
        tokio::task::spawn_blocking(move || {
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_ewtune")).args(&args).env("EWTUNE_ADDR", addr).env("EWTUNE_TOKEN", tok).output().unwrap();
            (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
        })
    };
    let download = vec!["jobs".to_string(), "download".into(), full_done.job_id.clone(), "--out".into(), out.to_string_lossy().into_owned()];
    let (ok, stdout, stderr) = cli(download.clone()).await.unwrap();
    assert!(ok, "{stderr}");
    for a in &full_done.artifacts {
        assert_eq!(sha(&std::fs::read(out.join(&a.path)).unwrap()), a.sha256);
        assert!(stdout.contains(&format!("{}  {}", a.sha256, a.path)), "{stdout}");
    }
    let (ok, _, stderr) = cli(download).await.unwrap();
    assert!(!ok && stderr.contains("not an empty directory"), "{stderr}");
    assert_eq!(names(root.path()), ["model"], "the refused download left nothing");
    let (ok, stdout, stderr) = cli(vec!["jobs".into(), "watch".into(), lora_done.job_id.clone()]).await.unwrap();
    assert!(ok, "{stderr}");
    // On a pipe, one readable line per event, never a raw payload.
    let steps = lora_done.steps_planned;
    assert!(stderr.lines().next().is_some_and(|l| l.starts_with(&format!("admitted: {steps} steps at noise multiplier"))), "{stderr}");
    assert!(stderr.contains("\nstarted\n") && stderr.contains(&format!("step 1/{steps}: certified epsilon spent")), "{stderr}");
    assert!(stderr.contains(&format!("succeeded ({steps} steps done and spent, 0 planned steps released)")), "{stderr}");
    assert!(!stderr.contains('{'), "no JSON: {stderr}");
    assert!(stdout.contains("PEFT LoRA adapter over base model `tiny`") && stdout.contains(&format!("ewtune jobs download {} --out DIR", lora_done.job_id)), "{stdout}");
    d.stop().await;
}

/// ewtune's per-token log-probs of `ids` under the model in `dir` (adapters over their
/// recorded base), as transformers' are compared with: float64 log-softmax of float32 logits.
fn ewtune_logprobs(dir: &Path, ids: &[Vec<i64>]) -> Vec<Vec<f64>> {
    let model = load_trained(dir, AdapterBase::Recorded, Device::Cpu).unwrap();
    let _no_grad = tch::no_grad_guard();
    ids.iter()
        .map(|seq| {
            let t = Tensor::from_slice(seq).unsqueeze(0);
            Vec::<f64>::try_from(&token_logprobs(&model.forward(&t, None), &t).squeeze_dim(0)).unwrap()
        })
        .collect()
}

/// transformers 5.24 and PEFT 0.21.2 (the project venv) load what ewtune wrote, for GPT-2 and
/// Llama, LoRA and full: `AutoModelForCausalLM.from_pretrained(dir)` (and `PeftModel`) give
/// ewtune's log-probs within 1e-4; adapter_config.json is PEFT's own bytes; a bf16 checkpoint
/// loads as bf16 and, like a sharded one, is byte for byte what transformers' `save_pretrained`
/// writes (tests/check_outputs.py).
#[test]
fn transformers_and_peft_load_the_outputs_with_ewtunes_logprobs() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    base_from_fixture(&fixture("audit"), &r.join("gpt2"), false);
    base_from_fixture(&fixture("audit"), &r.join("gpt2-bf16"), true);
    base_from_fixture(&fixture("tiny-llama"), &r.join("llama"), false);
    let run = |name: &str, base: &str, finetune: &str| -> PathBuf {
        let dir = r.join(name);
        std::fs::create_dir(&dir).unwrap();
        let spec = job_spec(&dir, &format!("../{base}"), finetune);
        job::run(&spec, &AtomicBool::new(false), |_| {}).unwrap().output_model
    };
    let gpt2_lora = run("gpt2-lora", "gpt2", "mode = \"lora\"\nrank = 4\nalpha = 8");
    let llama_lora = run("llama-lora", "llama", "mode = \"lora\"\nrank = 4\nalpha = 16\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]");
    let gpt2_full = run("gpt2-full-bf16", "gpt2-bf16", "mode = \"full\"");
    let llama_full = run("llama-full", "llama", "mode = \"full\"");
    let max_shard = 20_000u64;
    let sharded = r.join("llama-full-sharded");
    let trained = Model::load(&llama_full, &FineTune::Full, None, Device::Cpu).unwrap();
    output::write(&sharded, &r.join("llama"), &trained.named_tensors(), Output::Full { max_shard_bytes: max_shard }).unwrap();
    assert!(sharded.join("model.safetensors.index.json").exists());

    let ids = |vocab: i64| -> Vec<Vec<i64>> { (0..3).map(|s| (0..12).map(|i| (7 * i * i + 13 * s + 5) % vocab).collect()).collect() };
    let (gpt2_ids, llama_ids) = (ids(400), ids(300));
    let adapter = |name: &str, dir: &Path, base: &str, ids: &[Vec<i64>], rank: i64, alpha: f64, targets: &[&str], fan_in_fan_out: bool| {
        serde_json::json!({
            "name": name, "kind": "adapter", "dir": dir, "ids": ids, "logprobs": ewtune_logprobs(dir, ids),
            "base": std::fs::canonicalize(r.join(base)).unwrap(), "r": rank, "lora_alpha": alpha as i64, "target_modules": targets, "fan_in_fan_out": fan_in_fan_out,
        })
    };
    let cases = serde_json::json!({ "cases": [
        adapter("gpt2 LoRA", &gpt2_lora, "gpt2", &gpt2_ids, 4, 8.0, &["c_attn"], true),
        adapter("llama LoRA", &llama_lora, "llama", &llama_ids, 4, 16.0, &["q_proj", "v_proj", "down_proj"], false),
        { "name": "gpt2 full from a bf16 base", "kind": "full", "dir": gpt2_full, "ids": gpt2_ids, "logprobs": ewtune_logprobs(&gpt2_full, &gpt2_ids), "dtype": "bfloat16", "max_shard_size": output::DEFAULT_MAX_SHARD_BYTES },
        { "name": "llama full", "kind": "full", "dir": llama_full, "ids": llama_ids, "logprobs": ewtune_logprobs(&llama_full, &llama_ids), "dtype": "float32", "max_shard_size": output::DEFAULT_MAX_SHARD_BYTES },
        { "name": "llama full, sharded", "kind": "full", "dir": sharded, "ids": llama_ids, "logprobs": ewtune_logprobs(&llama_full, &llama_ids), "dtype": "float32", "max_shard_size": max_shard },
    ]});
    let cases_file = r.join("cases.json");
    std::fs::write(&cases_file, serde_json::to_vec(&cases).unwrap()).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = repo.join(".venv/bin/python");
    assert!(python.exists(), "scripts/setup.sh makes the venv with transformers and peft (requirements-ci.txt)");
    let out = std::process::Command::new(python)
        .arg(repo.join("tests/check_outputs.py"))
        .arg(&cases_file)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success() && stdout.contains("OK 5 outputs"), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
}
