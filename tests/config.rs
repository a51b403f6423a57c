//! `ewtuned`'s configuration layers, through the real binary: built-in default < `--config`
//! file < `EWTUNED_*` environment variable < command-line flag. Each run gets its environment
//! with `Command::env` (every `EWTUNED_*` variable of this process removed first), so no test
//! changes this process's environment and the tests run in parallel. `--print-config` reports
//! what the daemon resolved, as `ewtuned.toml` keys, without serving.

use std::path::Path;
use std::process::Command;

/// Runs `ewtuned args` with exactly the `EWTUNED_*` variables in `env`: its exit code, stdout and stderr.
fn ewtuned(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ewtuned"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("EWTUNED_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.args(args).envs(env.iter().copied()).env("OMP_NUM_THREADS", "1").output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

/// The configuration `ewtuned --print-config` resolves, as a TOML table.
fn resolved(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let args: Vec<&str> = args.iter().copied().chain(["--print-config"]).collect();
    let (code, out, err) = ewtuned(&args, env);
    assert_eq!(code, 0, "ewtuned {args:?} with {env:?}: {err}");
    out.parse().unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Runs `ewtuned` expecting it to refuse its configuration: its message.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let args: Vec<&str> = args.iter().copied().chain(["--print-config"]).collect();
    let (code, out, err) = ewtuned(&args, env);
    assert_eq!((code, out.as_str()), (2, ""), "ewtuned {args:?} with {env:?} should fail: {err}");
    err
}

fn get<'t>(t: &'t toml::Table, key: &str) -> &'t toml::Value {
    t.get(key).unwrap_or_else(|| panic!("no {key} in {t}"))
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("ewtuned.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn config_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let file = write_config(
        dir.path(),
        "listen = \"127.0.0.1:6001\"\nmodels_dir = \"/models/file\"\nconcurrency = 2\nmax_connections = 11\nidle_timeout_secs = 31\ndownloads_per_tenant = 5\n",
    );
    let base = ["--data-dir", data, "--config", &file];
    let show = |t: &toml::Table| {
        ["listen", "models_dir", "concurrency", "max_connections", "idle_timeout_secs", "downloads_per_tenant"].map(|k| get(t, k).to_string()).join(" ")
    };

    // Nothing set: the defaults.
    let t = resolved(&["--data-dir", data], &[]);
    assert_eq!(show(&t), format!("\"127.0.0.1:50051\" \"{data}/models\" 1 256 300 4"));

    // The file alone.
    let t = resolved(&base, &[]);
    assert_eq!(show(&t), "\"127.0.0.1:6001\" \"/models/file\" 2 11 31 5");

    // The environment over the file, key by key: what it does not set stays the file's.
    let env = [
        ("EWTUNED_LISTEN", "127.0.0.1:6002"),
        ("EWTUNED_MODELS_DIR", "/models/env"),
        ("EWTUNED_CONCURRENCY", "3"),
        ("EWTUNED_MAX_CONNECTIONS", "12"),
        ("EWTUNED_IDLE_TIMEOUT_SECS", "32"),
    ];
    let t = resolved(&base, &env);
    assert_eq!(show(&t), "\"127.0.0.1:6002\" \"/models/env\" 3 12 32 5");

    // Flags over both.
    let flags = ["--listen", "127.0.0.1:6003", "--models-dir", "/models/flag", "--concurrency", "4", "--max-connections", "13"];
    let args: Vec<&str> = base.iter().chain(&flags).copied().collect();
    let t = resolved(&args, &env);
    assert_eq!(show(&t), "\"127.0.0.1:6003\" \"/models/flag\" 4 13 32 5");

    // A flag over the file with no variable set.
    let t = resolved(&args, &[]);
    assert_eq!(show(&t), "\"127.0.0.1:6003\" \"/models/flag\" 4 13 31 5");
}

#[test]
fn the_data_dir_and_the_file_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "max_concurrent_uploads = 7\n");
    let data = dir.path().join("data");
    let t = resolved(&[], &[("EWTUNED_DATA_DIR", data.to_str().unwrap()), ("EWTUNED_CONFIG", &file)]);
    assert_eq!((get(&t, "max_concurrent_uploads").as_integer(), get(&t, "models_dir").as_str()), (Some(7), Some(data.join("models").to_str().unwrap())));
    // --data-dir beats EWTUNED_DATA_DIR.
    let other = dir.path().join("other");
    let t = resolved(&["--data-dir", other.to_str().unwrap()], &[("EWTUNED_DATA_DIR", data.to_str().unwrap())]);
    assert_eq!(get(&t, "models_dir").as_str(), Some(other.join("models").to_str().unwrap()));
    // Neither: refused, saying how to give it (an empty variable counts as unset).
    for env in [&[][..], &[("EWTUNED_DATA_DIR", "")][..]] {
        assert_eq!(refused(&[], env), "error: data_dir is required: give --data-dir or set EWTUNED_DATA_DIR\n");
    }
    // Subcommands read it as well.
    let (code, _, err) = ewtuned(&["key", "show"], &[("EWTUNED_DATA_DIR", data.to_str().unwrap())]);
    assert_eq!(code, 2);
    assert!(err.contains(&format!("no signing key at {}", data.join("signing_key.pk8").display())), "{err}");
}

#[test]
fn an_empty_variable_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "listen = \"127.0.0.1:6001\"\nconcurrency = 2\n");
    let data = dir.path().join("data");
    let empty = [("EWTUNED_LISTEN", ""), ("EWTUNED_CONCURRENCY", ""), ("EWTUNED_MODELS_DIR", ""), ("EWTUNED_TLS_CERT", ""), ("EWTUNED_CONFIG", "")];
    let t = resolved(&["--data-dir", data.to_str().unwrap(), "--config", &file], &empty);
    assert_eq!((get(&t, "listen").as_str(), get(&t, "concurrency").as_integer()), (Some("127.0.0.1:6001"), Some(2)));
    assert_eq!((get(&t, "models_dir").as_str(), t.get("tls_cert")), (Some(data.join("models").to_str().unwrap()), None));
}

#[test]
fn a_bad_variable_is_refused_naming_it_and_its_key() {
    let dir = tempfile::tempdir().unwrap();
    // The file's values are good; the environment's bad ones are refused all the same.
    let file = write_config(dir.path(), "listen = \"127.0.0.1:6001\"\nconcurrency = 2\nwatch_streams_per_tenant = 3\nhandshake_timeout_secs = 5\n");
    let data = dir.path().join("data");
    let base = ["--data-dir", data.to_str().unwrap(), "--config", &file];
    for (var, value, want) in [
        ("EWTUNED_WATCH_STREAMS_PER_TENANT", "many", "error: invalid watch_streams_per_tenant: `many` is not a whole number (from --watch-streams-per-tenant or EWTUNED_WATCH_STREAMS_PER_TENANT)\n"),
        ("EWTUNED_CONCURRENCY", "0", "error: invalid concurrency: must be >= 1 (from --concurrency or EWTUNED_CONCURRENCY)\n"),
        ("EWTUNED_HANDSHAKE_TIMEOUT_SECS", "100000", "error: invalid handshake_timeout_secs: 100000 s is more than a day (86400 s) (from --handshake-timeout-secs or EWTUNED_HANDSHAKE_TIMEOUT_SECS)\n"),
        ("EWTUNED_LISTEN", "localhost", "error: invalid listen: `localhost`: invalid socket address syntax (from --listen or EWTUNED_LISTEN)\n"),
    ] {
        assert_eq!(refused(&base, &[(var, value)]), want, "{var}={value}");
    }
    // A good flag hides a bad variable: the variable is never read.
    let args: Vec<&str> = base.iter().copied().chain(["--concurrency", "4"]).collect();
    assert_eq!(get(&resolved(&args, &[("EWTUNED_CONCURRENCY", "lots")]), "concurrency").as_integer(), Some(4));
    // A bad value in the file is named with the file.
    let bad = write_config(dir.path(), "max_connections = 0\n");
    assert_eq!(
        refused(&["--data-dir", data.to_str().unwrap(), "--config", &bad], &[]),
        "error: invalid max_connections: must be >= 1 (from ewtuned.toml)\n"
    );
}

#[test]
fn an_unknown_key_in_the_file_is_still_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), "max_conections = 3\n");
    let data = dir.path().join("data");
    // Even when the environment and a flag set the key it meant.
    let err = refused(&["--data-dir", data.to_str().unwrap(), "--config", &file, "--max-connections", "4"], &[("EWTUNED_MAX_CONNECTIONS", "5")]);
    assert_eq!(err, format!("error: config file {file}: unknown key `max_conections` in ewtuned.toml; did you mean `max_connections`?\n"));
}

#[test]
fn help_lists_every_variable() {
    let (code, out, err) = ewtuned(&["--help"], &[]);
    assert_eq!(code, 0, "{err}");
    for var in [
        "EWTUNED_DATA_DIR",
        "EWTUNED_CONFIG",
        "EWTUNED_LISTEN",
        "EWTUNED_MODELS_DIR",
        "EWTUNED_CONCURRENCY",
        "EWTUNED_TLS_CERT",
        "EWTUNED_TLS_KEY",
        "EWTUNED_MAX_CONNECTIONS",
        "EWTUNED_HANDSHAKE_TIMEOUT_SECS",
        "EWTUNED_IDLE_TIMEOUT_SECS",
        "EWTUNED_KEEPALIVE_INTERVAL_SECS",
        "EWTUNED_KEEPALIVE_TIMEOUT_SECS",
        "EWTUNED_MAX_CONCURRENT_UPLOADS",
        "EWTUNED_WATCH_STREAMS_PER_TENANT",
        "EWTUNED_DOWNLOADS_PER_TENANT",
    ] {
        assert!(out.contains(&format!("[env: {var}=]")), "{var} not in --help:\n{out}");
    }
}

/// The log on stderr: JSON lines when not on a terminal (the default `auto`, or `json`), text
/// without colour codes with `--log-format text`.
#[test]
fn the_log_is_json_lines_off_a_terminal_and_never_coloured() {
    use std::io::BufRead;
    for (format, json) in [(None, true), (Some("json"), true), (Some("text"), false)] {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ewtuned"));
        cmd.args(["--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"]).env("OMP_NUM_THREADS", "1").env_remove("EWTUNED_LOG_FORMAT").env_remove("RUST_LOG");
        if let Some(f) = format {
            cmd.args(["--log-format", f]);
        }
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().expect("ewtuned logs at start-up").unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!first.contains('\u{1b}'), "{format:?}: colour codes in {first:?}");
        let parsed = serde_json::from_str::<serde_json::Value>(&first);
        assert_eq!(parsed.is_ok(), json, "{format:?}: {first}");
        if json {
            let line = parsed.unwrap();
            assert!(line["level"].is_string() && line["fields"]["message"].is_string(), "{line}");
        }
    }
}
