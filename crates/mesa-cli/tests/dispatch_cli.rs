//! `mesa dispatch`: every argument is checked before Redis is contacted (exit 2, nothing sent), and the exit
//! status says what happened (0 sent, 1 Redis unreachable, 3 built without Redis support).

use std::process::{Command, Output, Stdio};

const URL: &str = "redis://127.0.0.1:6379";

/// Runs `mesa dispatch <args>` with a clean environment plus `env`.
fn dispatch(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesa"))
        .arg("dispatch")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run mesa dispatch")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `--redis-url <URL>` followed by `rest`.
fn with<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    ["--redis-url", URL]
        .into_iter()
        .chain(rest.iter().copied())
        .collect()
}

/// Expects exit 2 with `needle` in stderr.
fn refused(args: &[&str], needle: &str) {
    let output = dispatch(args, &[]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {text}");
    assert!(text.contains(needle), "{args:?}: {text}");
    assert!(
        output.stdout.is_empty(),
        "{args:?}: nothing is printed on stdout"
    );
}

#[test]
fn recipients_and_action_are_each_required_once() {
    refused(&["--redis-url", URL, "--event", "X"], "--to");
    refused(&["--redis-url", URL, "--all"], "--event");
    refused(
        &["--redis-url", URL, "--all", "--to", "a", "--event", "X"],
        "cannot be used with",
    );
    refused(
        &[
            "--redis-url",
            URL,
            "--all",
            "--connection",
            "0000000000c0ffee-1",
            "--event",
            "X",
        ],
        "cannot be used with",
    );
    refused(
        &["--redis-url", URL, "--all", "--event", "X", "--disconnect"],
        "cannot be used with",
    );
    refused(&["--redis-url", URL, "--all", "--data", "{}"], "--event");
    refused(
        &[
            "--redis-url",
            URL,
            "--all",
            "--event",
            "X",
            "--code",
            "4000",
        ],
        "--disconnect",
    );
    refused(&["--all", "--event", "X"], "--redis-url");
}

#[test]
fn payloads_ids_and_close_codes_are_checked() {
    refused(
        &with(&["--all", "--event", "X", "--data", "{not json"]),
        "--data: not JSON",
    );
    refused(&with(&["--all", "--event", "", "--data", "1"]), "--event");
    refused(
        &with(&["--to", "a,,b", "--event", "X"]),
        "non-empty user ids",
    );
    refused(
        &with(&["--all", "--exclude", "", "--event", "X"]),
        "non-empty user ids",
    );
    refused(
        &with(&["--connection", "42", "--event", "X"]),
        "--connection",
    );
    for code in ["999", "1005", "1015", "5000"] {
        refused(&with(&["--all", "--disconnect", "--code", code]), "--code");
    }
    refused(
        &with(&["--all", "--disconnect", "--code", "70000"]),
        "--code",
    );
    let long = "r".repeat(124);
    refused(
        &with(&["--all", "--disconnect", "--reason", &long]),
        "--reason",
    );
    refused(
        &with(&["--namespace", "a b", "--all", "--event", "X"]),
        "--namespace",
    );
}

#[test]
fn the_redis_url_scheme_is_checked_without_printing_the_url() {
    for (url, needle) in [
        ("http://:hunter2@127.0.0.1:6379", "scheme \"http\""),
        ("127.0.0.1:6379", "not a URL"),
    ] {
        let output = dispatch(&["--redis-url", url, "--all", "--event", "X"], &[]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(
            text.contains("--redis-url") && text.contains(needle),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
    // The nodes' variable is read too, and checked the same way.
    let output = dispatch(
        &["--all", "--event", "X"],
        &[("MESA_CLUSTER__REDIS_URL", "http://host")],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[cfg(not(feature = "redis"))]
#[test]
fn a_valid_dispatch_without_redis_support_says_so() {
    for args in [
        &[
            "--redis-url",
            URL,
            "--to",
            "alice,bob",
            "--exclude",
            "bob",
            "--event",
            "NEWS",
            "--data",
            r#"{"text":"hi"}"#,
        ][..],
        &[
            "--redis-url",
            URL,
            "--connection",
            "0000000000c0ffee-42",
            "--disconnect",
            "--code",
            "4000",
            "--reason",
            "bye",
        ][..],
    ] {
        let output = dispatch(args, &[]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(3), "{text}");
        assert!(text.contains("built without Redis support"), "{text}");
    }
}

#[cfg(feature = "redis")]
#[test]
fn an_unreachable_redis_exits_1_and_a_reachable_one_0() {
    use mesa_testkit::process::free_port;
    use mesa_testkit::redis::RedisServer;

    let dead = format!("redis://127.0.0.1:{}", free_port());
    let output = dispatch(&["--redis-url", &dead, "--all", "--event", "X"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("not sent"), "{}", stderr(&output));

    let redis = RedisServer::start();
    let output = dispatch(&["--redis-url", &redis.url(), "--all", "--event", "X"], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let answer: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON line on stdout");
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["nodes"], 0, "no node listens: {answer}");
}

#[test]
fn without_a_redis_url_or_a_config_naming_one_it_is_refused() {
    refused(&["--to", "bob", "--event", "X"], "--redis-url is required");
    let dir = mesa_testkit::redis::TempDir::new("mesa-dispatch");
    let file = dir.path().join("mesa.toml");
    std::fs::write(&file, "[server.resume]\nmax_messages = 3\n").expect("write config");
    let path = file.to_str().expect("utf-8 path");
    refused(
        &["--config", path, "--to", "bob", "--event", "X"],
        "--redis-url is required",
    );
    refused(
        &[
            "--config",
            "/nonexistent/mesa.toml",
            "--to",
            "bob",
            "--event",
            "X",
        ],
        "--config",
    );
}

/// With `--config`, the gateway's `[cluster]` says where Redis is and its `[server.resume]` what is kept for
/// an offline user: three of five with `max_messages = 3`, none with resume off. Without it, the defaults
/// keep all five.
#[cfg(feature = "redis")]
#[test]
fn a_config_file_gives_the_cluster_and_the_retention_of_the_gateway() {
    use mesa_testkit::redis::{RedisServer, TempDir};

    let redis = RedisServer::start();
    let dir = TempDir::new("mesa-dispatch");
    let write = |name: &str, resume: &str| {
        let file = dir.path().join(name);
        let text = format!(
            "[cluster]\nredis_url = \"{}\"\nnamespace = \"files\"\n\n[server.resume]\n{resume}\n",
            redis.url()
        );
        std::fs::write(&file, text).expect("write config");
        file.to_str().expect("utf-8 path").to_owned()
    };
    let bounded = write("bounded.toml", "max_messages = 3");
    let off = write("off.toml", "enabled = false");
    let send = |args: &[&str], n: u32| {
        let data = format!("{{\"n\":{n}}}");
        let mut all = args.to_vec();
        all.extend(["--event", "N", "--data", &data]);
        let output = dispatch(&all, &[]);
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    };
    for n in 1..=5 {
        send(&["--config", &bounded, "--to", "bob"], n);
        send(&["--config", &off, "--to", "carol"], n);
        send(
            &[
                "--redis-url",
                &redis.url(),
                "--namespace",
                "files",
                "--to",
                "dan",
            ],
            n,
        );
    }
    assert_eq!(redis.cli(&["XLEN", "mesa:files:st:{bob}"]), "3");
    assert_eq!(redis.cli(&["EXISTS", "mesa:files:st:{carol}"]), "0");
    assert_eq!(redis.cli(&["XLEN", "mesa:files:st:{dan}"]), "5");
    // A flag still wins over the file.
    send(
        &["--config", &bounded, "--namespace", "other", "--to", "bob"],
        6,
    );
    assert_eq!(redis.cli(&["XLEN", "mesa:other:st:{bob}"]), "1");
}
