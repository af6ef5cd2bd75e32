//! The stages on a three-node NATS cluster with `NATS_REPLICAS=3`, as `compose.cluster.yaml`
//! runs them, here with three nats-server processes on loopback ports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ops_support;

use std::time::Duration;

use monitor_core::settings::NatsSettings;
use monitor_tests::{free_port, nats_bin, wait_until, Process, TestEnv};
use ops_support::Stage;

/// A node of the test cluster.
struct Node {
    client_port: u16,
    process: Process,
}

/// Starts three nats-server processes with JetStream, routed to each other as cluster
/// `monitor`, and waits until JetStream has a meta leader.
async fn start_cluster(env: &TestEnv) -> Vec<Node> {
    let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = route_ports
        .iter()
        .map(|port| format!("nats-route://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let name = format!("nats-{}", i + 1);
        let store = env.work_dir().join(&name);
        let process = env
            .command(nats_bin())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &client_ports[i].to_string(),
                "-n",
                &name,
                "-js",
                "-sd",
            ])
            .arg(&store)
            .args([
                "--cluster_name",
                "monitor",
                "--cluster",
                &format!("nats://127.0.0.1:{}", route_ports[i]),
            ])
            .args(["--routes", &routes])
            .spawn(&name);
        nodes.push(Node {
            client_port: client_ports[i],
            process,
        });
    }
    nodes
}

fn cluster_url(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|node| format!("nats://127.0.0.1:{}", node.client_port))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_replicate_streams_on_three_nodes() {
    let env = TestEnv::new("ops_cluster").await;
    let mut nodes = start_cluster(&env).await;
    let url = cluster_url(&nodes);
    let settings = NatsSettings {
        url: url.clone(),
        replicas: 3,
        ..env.nats_settings()
    };

    // The cluster is ready once a stream with three replicas can be created: that needs a
    // JetStream meta leader and all three nodes.
    let client = settings
        .connect("ops-cluster-test")
        .await
        .expect("connect to the cluster");
    let js = async_nats::jetstream::new(client);
    let ready = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let js = js.clone();
        let settings = settings.clone();
        async move { monitor_core::topology::ensure(&js, &settings).await.is_ok() }
    })
    .await;
    assert!(
        ready,
        "the cluster never accepted streams with three replicas:\n{}",
        nodes[0].process.log()
    );

    let evaluate = Stage::start(
        &env,
        "evaluate",
        "evaluate",
        &[("NATS_URL", url.clone()), ("NATS_REPLICAS", "3".into())],
    );
    let healthy = || async { matches!(evaluate.health().await, Some((200, _))) };
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), healthy).await,
        "evaluate never healthy on the cluster:\n{}",
        evaluate.process.log()
    );

    let subjects = settings.subjects();
    for stream in [
        subjects.events_stream(),
        subjects.alerts_stream(),
        subjects.status_stream(),
    ] {
        let mut handle = js.get_stream(&stream).await.expect("the stream exists");
        let info = handle.info().await.expect("stream info");
        assert_eq!(info.config.num_replicas, 3, "{stream} keeps three replicas");
        let cluster = info
            .cluster
            .as_ref()
            .expect("the stream runs on the cluster");
        assert_eq!(
            cluster.replicas.len(),
            2,
            "{stream}: a leader and two followers"
        );
    }

    // One node down: the streams keep a leader and evaluate stays (or becomes again) healthy.
    nodes[2].process.kill().await;
    let stream = subjects.events_stream();
    let readable = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            match js.get_stream(&stream).await {
                Ok(mut handle) => handle
                    .info()
                    .await
                    .is_ok_and(|info| info.cluster.as_ref().is_some_and(|c| c.leader.is_some())),
                Err(_) => false,
            }
        }
    })
    .await;
    assert!(readable, "{stream} has no leader with one node down");
    assert!(
        wait_until(Duration::from_secs(60), Duration::from_millis(200), healthy).await,
        "evaluate not healthy with one node down:\n{}",
        evaluate.process.log()
    );
}
