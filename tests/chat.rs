//! The conversational dataset format against transformers: `{"messages": [...]}` lines rendered
//! with the model's chat template give exactly `apply_chat_template(messages, tokenize=True)`'s
//! ids, and the loss mask is exactly transformers' assistant-token mask of the same template with
//! `{% generation %}` around the assistant content (tokens overlapping the content), on the
//! fixture's template, a Qwen2.5 (ChatML) template and a Llama-3-style template kept in
//! tokenizer_config.json; a job trains on such a dataset; malformed lines and a model without a
//! template are errors naming the line. The Python side is tests/python/chat_oracle.py.

use crate::util::fixture;
use ewtune::train::chat::ChatTemplate;
use ewtune::train::data::{self, DataConfig, Dataset, Encoder};
use ewtune::train::job::{self, JobSpec};
use ewtune::train::TrainError;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "scripts/setup.sh makes the venv with transformers (requirements-ci.txt)");
    p
}

/// Qwen2.5-Instruct's template (ChatML, tools), as its tokenizer_config.json ships it.
const QWEN25: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// A Llama-3.1-style template: `bos_token`, the system message trimmed and taken out of the
/// list, `strftime_now`, every content `| trim`.
const LLAMA3: &str = r#"{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Today Date: " + strftime_now("%d %b %Y") + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"#;

/// `template` with transformers' `{% generation %}` around the assistant contents only (same
/// text): the oracle's assistant mask.
fn tagged(template: &str, plain: &str, marked: &str) -> String {
    assert_eq!(template.matches(plain).count(), 1, "{plain}");
    template.replace(plain, marked)
}

fn qwen_tagged() -> String {
    let t = tagged(
        QWEN25,
        r#"    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
"#,
        r#"    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" and not message.tool_calls %}
        {{- '<|im_start|>' + message.role + '\n' }}{% generation %}{{ message.content }}{% endgeneration %}{{ '<|im_end|>' + '\n' }}
"#,
    );
    tagged(&t, "{{- '\\n' + message.content }}", "{{- '\\n' }}{% generation %}{{ message.content }}{% endgeneration %}")
}

fn llama3_tagged() -> String {
    tagged(
        LLAMA3,
        "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\n",
        "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim }}{% endgeneration %}{% else %}{{ message['content'] | trim }}{% endif %}{{ '<|eot_id|>' }}\n",
    )
}

/// The fixture's template (`tests/fixtures/models/llama-tied/chat_template.jinja`), tagged.
const FIXTURE_TAGGED: &str = "{% for message in messages %}{{ '<|endoftext|>' + message['role'] + '\\n' }}{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}{% else %}{{ message['content'] }}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|endoftext|>assistant\\n' }}{% endif %}";

/// A model directory with the fixtures' tokenizer plus `special` as added special tokens (ids
/// 300, 301, ...), `tokenizer_config` as its config, and `template` as chat_template.jinja.
fn model_dir(dir: &Path, special: &[&str], tokenizer_config: Value, template: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut tok: Value = serde_json::from_slice(&std::fs::read(fixture("models/llama-tied/tokenizer.json")).unwrap()).unwrap();
    let added = tok["added_tokens"].as_array_mut().unwrap();
    for (i, s) in special.iter().enumerate() {
        added.push(json!({"id": 300 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
    }
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tok).unwrap()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_vec_pretty(&tokenizer_config).unwrap()).unwrap();
    if let Some(t) = template {
        std::fs::write(dir.join("chat_template.jinja"), t).unwrap();
    }
}

/// The conversations, as JSON text: both sides read them in this key order (the tool call's
/// arguments are written by `tojson` in it, as Python dicts keep it).
const CONVERSATIONS: [&str; 4] = [
    r#"[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "hello"}]"#,
    r#"[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}, {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, of course."}]"#,
    r#"[{"role": "system", "content": "Réponds en français. 🇫🇷 "}, {"role": "user", "content": "Ça va ? 東京は？"}, {"role": "assistant", "content": "  Très bien ! 😀 — naïve café\n\n"}]"#,
    r#"[{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"unit": "celsius", "city": "Paris"}}}]}, {"role": "tool", "content": "18"}, {"role": "assistant", "content": "It is 18 °C in Paris."}]"#,
];

fn conversations() -> Vec<Value> {
    CONVERSATIONS.iter().map(|c| serde_json::from_str(c).unwrap()).collect()
}

fn write_jsonl(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn chat_tokens_and_loss_masks_match_transformers() {
    let root = tempfile::tempdir().unwrap();
    let qwen = root.path().join("qwen");
    model_dir(&qwen, &["<|im_start|>", "<|im_end|>"], json!({"tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": null, "model_max_length": 4096}), Some(QWEN25));
    let llama3 = root.path().join("llama3");
    let config = json!({
        "tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "model_max_length": 4096,
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "chat_template": [{"name": "default", "template": LLAMA3}, {"name": "tool_use", "template": "unused"}],
    });
    model_dir(&llama3, &["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], config, None);
    let models = [(fixture("models/llama-tied"), FIXTURE_TAGGED.to_string()), (qwen, qwen_tagged()), (llama3, llama3_tagged())];

    let convs = conversations();
    let data = root.path().join("chat.jsonl");
    std::fs::write(&data, CONVERSATIONS.iter().map(|c| format!("{{\"messages\": {c}}}\n")).collect::<String>()).unwrap();
    let cases: Vec<String> = models
        .iter()
        .map(|(dir, t)| format!(r#"{{"model": {}, "tagged_template": {}, "conversations": [{}]}}"#, json!(dir), json!(t), CONVERSATIONS.join(", ")))
        .collect();
    let cases_path = root.path().join("cases.json");
    std::fs::write(&cases_path, format!("[{}]", cases.join(", "))).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/chat_oracle.py");
    let o = std::process::Command::new(python()).arg(script).arg(&cases_path).env("OMP_NUM_THREADS", "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let theirs: Vec<Vec<Value>> = serde_json::from_slice(&o.stdout).unwrap();

    let cfg = DataConfig { max_length: 4096, ..DataConfig::default() };
    for ((dir, _), theirs) in models.iter().zip(&theirs) {
        let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let ours = Dataset::load(&data, Encoder::for_model(&tok, dir), &cfg, 1000).unwrap();
        assert_eq!(ours.counts().truncated_examples, 0);
        let chat = ChatTemplate::for_model(dir).unwrap().unwrap();
        let name = dir.file_name().unwrap().to_string_lossy();
        for (k, ((unit, t), conv)) in ours.units.iter().zip(theirs).zip(&convs).enumerate() {
            let what = format!("{name}, conversation {k}");
            let ex = &unit[0];
            let ids: Vec<i64> = serde_json::from_value(t["ids"].clone()).unwrap();
            let tagged_ids: Vec<i64> = serde_json::from_value(t["tagged_ids"].clone()).unwrap();
            assert_eq!(tagged_ids, ids, "{what}: the tagged template renders the same text");
            assert_eq!(ex.ids, ids, "{what}: ids = apply_chat_template(tokenize=True)");
            let mut mask: Vec<i64> = serde_json::from_value(t["mask"].clone()).unwrap();
            mask[0] = 0; // position 0 is never a target
            assert_eq!(ex.loss_mask, mask, "{what}: loss mask = transformers' assistant mask");

            // The spans are the assistant contents (as written: trimmed by the Llama-3 template),
            // and the mask is exactly the tokens whose offsets in transformers' text overlap them.
            let msgs = ewtune::train::chat::Conversation::parse(&ordered(CONVERSATIONS[k]), "messages").unwrap();
            let rendered = chat.render_for_training(&msgs).unwrap();
            assert_eq!(rendered.text, t["text"].as_str().unwrap(), "{what}: text");
            let contents: Vec<String> = conv.as_array().unwrap().iter().filter(|m| m["role"] == "assistant").map(|m| m["content"].as_str().unwrap().to_string()).filter(|c| !c.is_empty()).collect();
            assert_eq!(rendered.assistant_spans.len(), contents.len(), "{what}");
            for (span, c) in rendered.assistant_spans.iter().zip(&contents) {
                let found = &rendered.text[span.clone()];
                assert!(found == c || found == c.trim(), "{what}: span {found:?} for content {c:?}");
            }
            let chars = |byte: usize| rendered.text[..byte].chars().count() as i64;
            let spans: Vec<(i64, i64)> = rendered.assistant_spans.iter().map(|s| (chars(s.start), chars(s.end))).collect();
            let offsets: Vec<(i64, i64)> = serde_json::from_value(t["offsets"].clone()).unwrap();
            let mut by_offsets: Vec<i64> = offsets.iter().map(|&(a, b)| i64::from(spans.iter().any(|&(s, e)| a < e && b > s))).collect();
            by_offsets[0] = 0;
            assert_eq!(ex.loss_mask, by_offsets, "{what}: mask = tokens overlapping the contents");
            assert!(ex.loss_mask.iter().sum::<i64>() > 0, "{what}");
        }
    }
}

/// JSON text as the data reader hands it to templates (keys in order).
fn ordered(json: &str) -> minijinja::Value {
    serde_json::from_str::<ewtune::train::chat::OrderedJson>(json).unwrap().0
}

#[test]
fn a_job_trains_two_dp_steps_on_conversations() {
    let root = tempfile::tempdir().unwrap();
    let convs = conversations();
    let lines: Vec<Value> = (0..24).map(|i| json!({"messages": convs[i % 2]})).collect();
    write_jsonl(&root.path().join("chat.jsonl"), &lines);
    let text = format!(
        "model = {:?}\ndata = \"chat.jsonl\"\noutput = \"out\"\ndevice = \"cpu\"\n[privacy]\nnoise_multiplier = 0.5\ndelta = 1e-5\n[training]\nbatch_size = 8\nsteps = 2\nmicro_batch = 4\nlearning_rate = 0.05\n[data_format]\nmessages_field = \"messages\"\nmax_length = 64\n",
        fixture("models/llama-tied").display().to_string()
    );
    std::fs::write(root.path().join("job.toml"), text).unwrap();
    let spec = JobSpec::from_toml_file(&root.path().join("job.toml")).unwrap();
    let out = job::run(&spec, &AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(out.steps_done, 2);
    assert_eq!((out.data.examples, out.data.units, out.data.truncated_examples), (24, 24, 0));
    assert!(out.output_model.join("adapter_model.safetensors").exists());
}

#[test]
fn conversation_lines_errors_and_options() {
    let root = tempfile::tempdir().unwrap();
    let fixture_dir = fixture("models/llama-tied");
    let tok = tokenizers::Tokenizer::from_file(fixture_dir.join("tokenizer.json")).unwrap();
    let enc = || Encoder::for_model(&tok, &fixture_dir);
    let path = root.path().join("d.jsonl");
    let good = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});

    // Malformed lines: the error names the line and the field at fault.
    for (bad, expect) in [
        (json!({"messages": "hi"}), "`messages` must be a list"),
        (json!({"messages": [{"role": "user", "content": "a"}, 3]}), "`messages[1]` must be an object"),
        (json!({"messages": [{"content": "a"}]}), "`messages[0]` has no `role`"),
        (json!({"messages": [{"role": "user"}]}), "`messages[0]` has no `content`"),
        (json!({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}), "`messages[0].content` must be a string"),
        (json!({"messages": [{"role": "user", "content": "a"}]}), "no message with role `assistant`"),
    ] {
        write_jsonl(&path, &[good.clone(), bad]);
        match Dataset::load(&path, enc(), &DataConfig::default(), 300) {
            Err(TrainError::BadDataset { line: 2, reason, .. }) => assert!(reason.contains(expect), "{reason}"),
            other => panic!("expected a bad line 2 ({expect}), got {other:?}"),
        }
    }

    // A model without a chat template: the error names the files and the format; text still loads.
    let bare = root.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(fixture_dir.join("tokenizer.json"), bare.join("tokenizer.json")).unwrap();
    write_jsonl(&path, &[json!({"text": "plain text line"}), good.clone()]);
    match Dataset::load(&path, Encoder::for_model(&tok, &bare), &DataConfig::default(), 300) {
        Err(TrainError::BadDataset { line: 2, reason, .. }) => {
            assert!(reason.contains("messages format needs") && reason.contains("chat_template.jinja") && reason.contains("tokenizer_config.json"), "{reason}")
        }
        other => panic!("expected a missing-template error, got {other:?}"),
    }
    match Dataset::load(&path, &tok, &DataConfig::default(), 300) {
        Err(TrainError::BadDataset { line: 2, reason, .. }) => assert!(reason.contains("only a tokenizer was given"), "{reason}"),
        other => panic!("expected an error, got {other:?}"),
    }
    write_jsonl(&path, &[json!({"text": "plain text line"})]);
    assert_eq!(Dataset::load(&path, Encoder::for_model(&tok, &bare), &DataConfig::default(), 300).unwrap().len(), 1);

    // A template that refuses the conversation (raise_exception): its message, with the line.
    let strict = root.path().join("strict");
    std::fs::create_dir_all(&strict).unwrap();
    std::fs::copy(fixture_dir.join("tokenizer.json"), strict.join("tokenizer.json")).unwrap();
    std::fs::write(strict.join("chat_template.jinja"), "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with the user') }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}").unwrap();
    write_jsonl(&path, &[good.clone(), json!({"messages": [{"role": "assistant", "content": "a"}]})]);
    match Dataset::load(&path, Encoder::for_model(&tok, &strict), &DataConfig::default(), 300) {
        Err(TrainError::BadDataset { line: 2, reason, .. }) => assert!(reason.contains("Conversations must start with the user"), "{reason}"),
        other => panic!("expected the template's refusal, got {other:?}"),
    }

    // Truncation at max_length is counted, as for the other formats; count() agrees with load().
    let long = json!({"messages": [{"role": "user", "content": "Tell me a long story."}, {"role": "assistant", "content": "Once upon a time there was a very small model that learnt to talk."}]});
    write_jsonl(&path, &[good.clone(), long]);
    let cfg = DataConfig { max_length: 32, ..DataConfig::default() };
    let d = Dataset::load(&path, enc(), &cfg, 300).unwrap();
    assert_eq!(d.counts().truncated_examples, 1);
    assert_eq!(d.units[1][0].ids.len(), 32);
    assert_eq!(data::count(&path, enc(), &cfg, 300).unwrap(), d.counts());

    // A configured field name, and users as privacy units. The default name is not serialised
    // (specs and checkpoint fingerprints from before the field stay as they were).
    let cfg = DataConfig { messages_field: "conversation".into(), user_field: Some("user".into()), ..DataConfig::default() };
    assert!(!serde_json::to_string(&DataConfig::default()).unwrap().contains("messages_field"));
    assert_eq!(serde_json::from_str::<DataConfig>(&serde_json::to_string(&cfg).unwrap()).unwrap(), cfg);
    let conv = good["messages"].clone();
    write_jsonl(&path, &[json!({"user": "ann", "conversation": conv}), json!({"user": "bob", "conversation": conv}), json!({"user": "ann", "conversation": conv})]);
    let d = Dataset::load(&path, enc(), &cfg, 300).unwrap();
    assert_eq!(d.units.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    // The assistant's "hello" (and the token straddling its start) is all that is trained on.
    let ex = &d.units[0][0];
    let trained: Vec<u32> = ex.ids.iter().zip(&ex.loss_mask).filter(|(_, &m)| m == 1).map(|(&i, _)| i as u32).collect();
    assert_eq!(tok.decode(&trained, false).unwrap(), "hello");
}
