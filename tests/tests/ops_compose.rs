//! The deployment files: `compose.yaml`, `compose.cluster.yaml`, `Dockerfile` and the NATS
//! configurations in `deploy/`.
//!
//! This machine has no Docker engine, so the images are never built and the stacks never
//! started here. What is checked instead: both compose files are valid against the Compose
//! Specification's JSON schema (`deploy/compose-spec.json`), every command they run exists in
//! the real binaries' `--help` with every flag it passes, every variable they set is a
//! setting some binary reads, the start order and health checks hold together, and
//! `nats-server -t` accepts the NATS configurations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use monitor_tests::{bin, nats_bin, workspace_dir};
use serde_json::Value;

/// The binaries the Dockerfile builds; compose services run them by name.
const BINARIES: [&str; 5] = ["allocator", "ingest", "evaluate", "notify", "devkit"];
/// Stage services that run until stopped and so must have a health check.
const LONG_RUNNING: [&str; 4] = ["allocator", "ingest", "evaluate", "notify"];

fn read(path: &str) -> String {
    let full = workspace_dir().join(path);
    std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", full.display()))
}

/// Parses a compose file as Docker Compose does: YAML with `<<` merge keys applied.
fn compose(path: &str) -> Value {
    let mut yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    yaml.apply_merge()
        .unwrap_or_else(|e| panic!("{path}: merge keys cannot be applied: {e}"));
    serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{path} does not convert to JSON: {e}"))
}

fn services(file: &Value) -> &serde_json::Map<String, Value> {
    file["services"].as_object().expect("services is a map")
}

/// Services that run the monitor image (they are built from the Dockerfile).
fn stage_services(file: &Value) -> Vec<(&String, &Value)> {
    services(file)
        .iter()
        .filter(|(_, service)| service.get("build").is_some())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn profiles(service: &Value) -> Vec<String> {
    strings(&service["profiles"])
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|env| {
            env.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn validate_against_schema(path: &str) {
    let schema: Value =
        serde_json::from_str(&read("deploy/compose-spec.json")).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the compose schema compiles");
    let file = compose(path);
    let errors: Vec<String> = validator
        .iter_errors(&file)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{path} breaks the compose schema:\n{}",
        errors.join("\n")
    );
}

#[test]
fn compose_files_match_compose_schema() {
    validate_against_schema("compose.yaml");
    validate_against_schema("compose.cluster.yaml");
}

#[test]
fn schema_rejects_an_invalid_compose_file() {
    // The validation above can fail: an unknown service key and a wrong type are reported.
    let schema: Value =
        serde_json::from_str(&read("deploy/compose-spec.json")).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the compose schema compiles");
    let broken = serde_json::json!({
        "services": { "x": { "image": "a", "comand": ["run"], "restart": 3 } }
    });
    assert!(!validator.is_valid(&broken));
}

/// Returns every `binary subcommand --flag` a service runs, from its command array or from
/// the `sh -c` script it runs.
fn invocations(command: &[String]) -> Vec<Vec<String>> {
    if command.first().map(String::as_str) == Some("sh") {
        let script = command.last().cloned().unwrap_or_default();
        return script
            .split([';', '|', '\n', '(', ')'])
            .map(|part| {
                part.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter_map(|words| {
                let start = words.iter().position(|w| BINARIES.contains(&w.as_str()))?;
                Some(words[start..].to_vec())
            })
            .collect();
    }
    vec![command.to_vec()]
}

/// Runs `binary subcommand --help` and returns its output.
fn help(binary: &str, subcommand: &str) -> String {
    let output = std::process::Command::new(bin(binary))
        .args([subcommand, "--help"])
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("failed to run {binary} {subcommand} --help: {e}"));
    assert!(
        output.status.success(),
        "{binary} {subcommand} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn check_commands(path: &str) {
    let file = compose(path);
    let mut checked = 0;
    for (name, service) in stage_services(&file) {
        let command = strings(&service["command"]);
        assert!(!command.is_empty(), "{path}: service {name} has no command");
        for words in invocations(&command) {
            let binary = words[0].as_str();
            assert!(
                BINARIES.contains(&binary),
                "{path}: service {name} runs {binary}, which the image does not contain"
            );
            let subcommand = words
                .get(1)
                .unwrap_or_else(|| panic!("{path}: {name} runs {binary} without a subcommand"));
            let text = help(binary, subcommand);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(
                    text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                    "{path}: service {name} passes {flag} to `{binary} {subcommand}`, whose --help does not list it"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 9, "{path}: only {checked} commands found");
}

#[test]
fn compose_commands_exist_in_binaries() {
    check_commands("compose.yaml");
    check_commands("compose.cluster.yaml");
}

/// Returns every variable (`[env: NAME`) that the help of any binary's command lists.
fn known_settings() -> BTreeSet<String> {
    let commands = [
        ("allocator", "run"),
        ("allocator", "migrate"),
        ("allocator", "allocate"),
        ("ingest", "run"),
        ("evaluate", "run"),
        ("notify", "run"),
        ("devkit", "seed"),
        ("devkit", "feed-replay"),
        ("devkit", "backend-stub"),
    ];
    let mut names = BTreeSet::new();
    for (binary, subcommand) in commands {
        let text = help(binary, subcommand);
        for part in text.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

fn check_environment(path: &str, known: &BTreeSet<String>) {
    let file = compose(path);
    for (name, service) in stage_services(&file) {
        for variable in environment(service).keys() {
            // RUST_LOG is read by the tracing filter, not by a flag.
            if variable == "RUST_LOG" {
                continue;
            }
            assert!(
                known.contains(variable),
                "{path}: service {name} sets {variable}, which no binary reads"
            );
        }
    }
}

#[test]
fn compose_variables_are_known_settings() {
    let known = known_settings();
    for expected in [
        "DB_PASSWORD",
        "NATS_REPLICAS",
        "METRICS_ADDR",
        "BIRDEYE_API_KEY",
        "WS_TOKEN",
    ] {
        assert!(
            known.contains(expected),
            "no binary lists {expected} in --help: {known:?}"
        );
    }
    check_environment("compose.yaml", &known);
    check_environment("compose.cluster.yaml", &known);
}

/// Checks what the schema cannot: dependencies exist and start in an order that can succeed.
fn check_start_order(path: &str) {
    let file = compose(path);
    let all = services(&file);
    for (name, service) in all {
        let Some(depends) = service["depends_on"].as_object() else {
            continue;
        };
        for (dependency, condition) in depends {
            let target = all.get(dependency).unwrap_or_else(|| {
                panic!("{path}: {name} depends on {dependency}, which is not defined")
            });
            let condition = condition["condition"].as_str().unwrap_or("service_started");
            match condition {
                "service_healthy" => assert!(
                    target.get("healthcheck").is_some(),
                    "{path}: {name} waits for {dependency} to be healthy, which has no health check"
                ),
                "service_completed_successfully" => assert_eq!(
                    target["restart"], "no",
                    "{path}: {name} waits for {dependency} to complete, which would be restarted"
                ),
                other => panic!("{path}: {name} waits for {dependency} with condition {other}"),
            }
            if profiles(target).iter().any(|p| p == "demo") {
                assert!(
                    profiles(service).iter().any(|p| p == "demo"),
                    "{path}: {name} runs without the demo profile but depends on the demo service {dependency}"
                );
            }
        }
    }
}

#[test]
fn compose_dependencies_can_start() {
    check_start_order("compose.yaml");
    check_start_order("compose.cluster.yaml");
}

fn check_stage_health(path: &str) {
    let file = compose(path);
    let all = services(&file);
    for name in LONG_RUNNING {
        let service = &all[name];
        let env = environment(service);
        let address = env
            .get("METRICS_ADDR")
            .unwrap_or_else(|| panic!("{path}: {name} sets no METRICS_ADDR"));
        let port = address.rsplit(':').next().expect("METRICS_ADDR has a port");
        let test = strings(&service["healthcheck"]["test"]).join(" ");
        assert!(
            test.contains(&format!(":{port}/healthz")),
            "{path}: the health check of {name} does not read /healthz on port {port}: {test}"
        );
        assert_eq!(
            service["restart"], "unless-stopped",
            "{path}: {name} is not restarted after a failure"
        );
    }
    assert_eq!(
        all["evaluate"]["deploy"]["replicas"], 2,
        "{path}: evaluate runs two replicas"
    );
    for name in ["feed-replay", "backend-stub", "seed"] {
        assert_eq!(
            profiles(&all[name]),
            ["demo"],
            "{path}: {name} belongs to the demo profile"
        );
    }
}

#[test]
fn compose_stages_serve_healthz() {
    check_stage_health("compose.yaml");
    check_stage_health("compose.cluster.yaml");
}

/// The version of nats-server the tests run (`NATS_VERSION` in scripts/services).
fn tested_nats_version() -> String {
    read("scripts/services")
        .lines()
        .find_map(|line| line.strip_prefix("NATS_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("scripts/services pins NATS_VERSION")
}

fn check_images(path: &str) {
    let file = compose(path);
    let nats_image = format!("nats:{}-alpine", tested_nats_version());
    let mut nats_services = 0;
    for (name, service) in services(&file) {
        if service.get("build").is_some() {
            continue;
        }
        let image = service["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: {name} has no image"));
        let tag = image.split_once(':').map(|(_, tag)| tag).unwrap_or("");
        let version: Vec<&str> = tag.split('-').next().unwrap_or("").split('.').collect();
        assert!(
            version.len() == 3 && version.iter().all(|part| part.parse::<u32>().is_ok()),
            "{path}: {name} uses {image}, not pinned to an exact version"
        );
        if image.starts_with("nats:") {
            assert_eq!(
                image, nats_image,
                "{path}: {name} runs another NATS version than the tests"
            );
            nats_services += 1;
        }
        if image.starts_with("mysql:") {
            assert!(
                tag.starts_with("8."),
                "{path}: MySQL 8.x expected, got {image}"
            );
        }
        let volumes = strings(&service["volumes"]);
        assert!(
            volumes
                .iter()
                .any(|v| v.starts_with(&format!("{name}-data:")) || v.contains("-data:/")),
            "{path}: {name} keeps its data in no named volume: {volumes:?}"
        );
    }
    assert!(nats_services >= 1, "{path}: no NATS service");
}

#[test]
fn compose_images_are_pinned() {
    check_images("compose.yaml");
    check_images("compose.cluster.yaml");
}

#[test]
fn cluster_file_runs_three_nats_replicas() {
    let file = compose("compose.cluster.yaml");
    let all = services(&file);
    let nodes: Vec<&String> = all.keys().filter(|name| name.starts_with("nats")).collect();
    assert_eq!(nodes, ["nats-1", "nats-2", "nats-3"]);

    let config = read("deploy/nats-cluster.conf");
    for node in &nodes {
        assert!(
            config.contains(&format!("nats-route://{node}:6222")),
            "no route to {node}"
        );
        assert_eq!(
            all[node.as_str()]["environment"]["NATS_SERVER_NAME"],
            node.as_str()
        );
    }
    for (name, service) in stage_services(&file) {
        let env = environment(service);
        if !env.contains_key("NATS_URL") {
            continue;
        }
        assert_eq!(
            env["NATS_REPLICAS"], "3",
            "compose.cluster.yaml: {name} keeps one replica"
        );
        for node in &nodes {
            assert!(
                env["NATS_URL"].contains(&format!("nats://{node}:4222")),
                "{name} does not list {node}"
            );
        }
    }
    let single = compose("compose.yaml");
    assert_eq!(
        environment(&services(&single)["allocator"])["NATS_REPLICAS"],
        "1"
    );
}

#[test]
fn demo_profile_replays_recorded_weth_trades() {
    let file = compose("compose.yaml");
    let all = services(&file);
    let replay = strings(&all["feed-replay"]["command"]).join(" ");
    assert!(
        replay.contains("--csv data/binance-ethusdt-trades-2023-02-02/trades.csv"),
        "{replay}"
    );
    assert!(
        replay.contains("--token 0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"),
        "{replay}"
    );
    assert!(workspace_dir()
        .join("data/binance-ethusdt-trades-2023-02-02/trades.csv")
        .is_file());

    let seed = strings(&all["seed"]["command"]).join(" ");
    let devkit_seed = seed.find("devkit seed").expect("seed runs devkit seed");
    let allocate = seed
        .find("allocator allocate --task-id")
        .expect("seed allocates the task");
    assert!(
        devkit_seed < allocate,
        "the task is allocated after it is seeded: {seed}"
    );

    let ingest = environment(&all["ingest"]);
    assert!(
        ingest["BIRDEYE_WS_URL"].contains("ws://feed-replay:8765"),
        "{ingest:?}"
    );
    let notify = environment(&all["notify"]);
    assert!(
        notify["WS_URL"].contains("ws://backend-stub:8080/websocket/monitor"),
        "{notify:?}"
    );
    let stub = strings(&all["backend-stub"]["command"]).join(" ");
    assert!(
        !stub.contains("--out"),
        "the stub prints alerts to its log: {stub}"
    );
}

/// `[[bin]]` names declared by the workspace's packages.
fn workspace_binaries() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for member in [
        "allocator",
        "ingest",
        "evaluate",
        "notify",
        "devkit",
        "core",
        "tests",
    ] {
        let manifest = read(&format!("{member}/Cargo.toml"));
        let mut in_bin = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if in_bin {
                if let Some(name) = line.strip_prefix("name = ") {
                    names.insert(name.trim_matches('"').to_owned());
                }
            }
        }
    }
    names
}

#[test]
fn dockerfile_ships_every_binary() {
    let dockerfile = read("Dockerfile");
    let binaries = workspace_binaries();
    assert_eq!(binaries, BINARIES.iter().map(|b| b.to_string()).collect());
    for binary in &binaries {
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "the Dockerfile does not copy {binary}"
        );
    }

    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 3, "multi-stage build expected: {stages:?}");
    let cook = dockerfile
        .find("cargo chef cook")
        .expect("dependencies are built from the recipe");
    let sources = dockerfile[cook..]
        .find("COPY . .")
        .expect("sources are copied after the dependency layer");
    assert!(sources > 0);
    assert!(dockerfile.contains("ARG RUNTIME_IMAGE=debian:bookworm-slim"));
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime runs as a declared user");
    assert_ne!(user.trim(), "root");

    let ignore = read(".dockerignore");
    for excluded in ["target", ".git", ".run"] {
        assert!(
            ignore.lines().any(|l| l.trim() == excluded),
            ".dockerignore does not exclude {excluded}"
        );
    }
}

fn nats_config_test(config: &Path, server_name: Option<&str>) -> std::process::Output {
    let mut command = std::process::Command::new(nats_bin());
    command.arg("-c").arg(config).arg("-t").env_clear();
    if let Some(name) = server_name {
        command.env("NATS_SERVER_NAME", name);
    }
    command.output().expect("nats-server runs")
}

#[test]
fn nats_configs_pass_nats_server_check() {
    let single = workspace_dir().join("deploy/nats.conf");
    let output = nats_config_test(&single, None);
    assert!(
        output.status.success(),
        "deploy/nats.conf: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        read("deploy/nats.conf").contains("jetstream"),
        "JetStream is enabled"
    );

    let cluster = workspace_dir().join("deploy/nats-cluster.conf");
    let output = nats_config_test(&cluster, Some("nats-2"));
    assert!(
        output.status.success(),
        "deploy/nats-cluster.conf: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The node name must come from the environment: without it the configuration is invalid.
    assert!(!nats_config_test(&cluster, None).status.success());
}

#[test]
fn readmes_say_images_are_not_built_here() {
    let english = read("README.md");
    assert!(english.contains("compose.cluster.yaml"));
    assert!(
        english.contains("not built"),
        "README.md says the images are not built or started here"
    );
    let chinese = read("README.zh-CN.md");
    assert!(chinese.contains("compose.cluster.yaml"));
    assert!(
        chinese.contains("没有构建"),
        "README.zh-CN.md says the images are not built here"
    );
}
