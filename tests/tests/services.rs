//! The harness against the real services that `scripts/test` starts: each test talks to one
//! server through `TestEnv` (or starts one of its own) and checks what came back.

use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use monitor_tests::{restart_service, wait_until, Anvil, NatsServer, Signal, TestEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::RwLock;

/// The tables that `migrations/` creates.
const TABLES: [&str; 7] = [
    "monitor_config_v2",
    "monitor_task_v2",
    "monitor_task_config_v2",
    "monitor_task_target_v2",
    "monitor_batch_v2",
    "monitor_batch_item_v2",
    "monitor_alert_log_v2",
];

/// Tests of this binary that use the shared nats-server take this lock for reading. The test
/// that restarts the server takes it for writing, so that no other test runs into the outage.
static SHARED_NATS: RwLock<()> = RwLock::const_new(());

#[tokio::test]
async fn kv_put_then_get_returns_value() {
    let _shared = SHARED_NATS.read().await;
    let env = TestEnv::new("kv_put_get").await;
    let topology = env.topology().await;

    topology
        .tasks
        .put("task.1", "spec of task 1".into())
        .await
        .expect("put into the tasks bucket");
    let value = topology
        .tasks
        .get("task.1")
        .await
        .expect("get from the tasks bucket");

    assert_eq!(value.as_deref(), Some(&b"spec of task 1"[..]));
    assert_eq!(topology.tasks.name, env.subjects().tasks_bucket());
}

#[tokio::test]
async fn migrations_create_all_seven_tables() {
    let env = TestEnv::new("migrated_tables").await;

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = ?",
    )
    .bind(env.db_name())
    .fetch_all(env.pool())
    .await
    .expect("list the tables of the test database");

    for table in TABLES {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} missing from {tables:?}"
        );
    }
}

#[tokio::test]
async fn each_env_gets_its_own_database_and_prefix() {
    let first = TestEnv::new("isolation").await;
    let second = TestEnv::new("isolation").await;

    assert_ne!(first.db_name(), second.db_name());
    assert_ne!(first.subject_prefix(), second.subject_prefix());
    sqlx::query("INSERT INTO monitor_task_v2 (task_name, task_type, chain_type) VALUES ('a', 'smart', 'eth')")
        .execute(first.pool())
        .await
        .expect("insert a task into the first database");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM monitor_task_v2")
        .fetch_one(second.pool())
        .await
        .expect("count the tasks of the second database");
    assert_eq!(count, 0, "a row written by one test is visible to another");
}

#[tokio::test]
async fn redis_answers_ping() {
    let env = TestEnv::new("redis_ping").await;
    let mut connection = env.redis_connection().await;

    let reply: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .expect("PING the test Redis");

    assert_eq!(reply, "PONG");
}

#[tokio::test]
async fn jetstream_publish_succeeds_after_nats_restart() {
    let _exclusive = SHARED_NATS.write().await;
    let env = TestEnv::new("nats_restart").await;
    env.topology().await;
    let js = env.jetstream().await;
    let subject = env.subjects().alerts(1);
    js.send_publish(
        subject.clone(),
        PublishMessage::build()
            .payload("before".into())
            .message_id("before"),
    )
    .await
    .expect("publish before the restart")
    .await
    .expect("ack before the restart");

    restart_service("nats").await;

    // The client reconnects by itself, and a publish sent meanwhile may fail. Retrying with the
    // same message id is safe because the stream stores a message id once.
    let publish_after = || async {
        let message = PublishMessage::build()
            .payload("after".into())
            .message_id("after");
        match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    };
    assert!(
        wait_until(
            Duration::from_secs(90),
            Duration::from_millis(250),
            publish_after
        )
        .await,
        "no publish was acknowledged within 90 s of the restart"
    );

    let mut stream = js
        .get_stream(env.subjects().alerts_stream())
        .await
        .expect("open the alerts stream");
    let info = stream.info().await.expect("read the alerts stream info");
    assert_eq!(
        info.state.messages, 2,
        "the stream lost or duplicated a message over the restart"
    );
    let first = stream.get_raw_message(1).await.expect("read message 1");
    assert_eq!(&first.payload[..], b"before");
}

#[tokio::test]
async fn private_nats_server_keeps_stream_over_kill() {
    let env = TestEnv::new("private_nats").await;
    let mut server = NatsServer::start(&env).await;
    let settings = server.settings(&env);
    let client = settings
        .connect("private-nats-test")
        .await
        .expect("connect to the private server");
    let js = async_nats::jetstream::new(client);
    monitor_core::topology::ensure(&js, &settings)
        .await
        .expect("create the streams");
    let subject = env.subjects().alerts(7);
    js.publish(subject.clone(), "before".into())
        .await
        .expect("publish before the crash")
        .await
        .expect("ack before the crash");

    server.kill().await;
    server.start_again().await;

    let publish_after = || async {
        let message = PublishMessage::build()
            .payload("after".into())
            .message_id("after");
        match js.send_publish(subject.clone(), message).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        }
    };
    assert!(
        wait_until(
            Duration::from_secs(90),
            Duration::from_millis(250),
            publish_after
        )
        .await,
        "no publish was acknowledged within 90 s of the restart"
    );
    let mut stream = js
        .get_stream(env.subjects().alerts_stream())
        .await
        .expect("open the alerts stream");
    let info = stream.info().await.expect("read the alerts stream info");
    assert_eq!(info.state.messages, 2);
}

#[tokio::test]
async fn anvil_answers_eth_chain_id() {
    let env = TestEnv::new("anvil").await;
    let anvil = Anvil::start(&env, &[]).await;

    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", anvil.port()))
        .await
        .expect("connect to anvil");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("anvil answered within 30 s")
    .expect("read the response");

    // 31337 (0x7a69) is anvil's default chain id.
    assert!(
        response.contains(r#""result":"0x7a69""#),
        "unexpected response: {response}"
    );
}

// The log starts with the command line, so the scripts below print texts passed in the
// environment, which the log can contain only once the shell has run that far.

#[tokio::test]
async fn process_terminate_returns_exit_status_and_keeps_log() {
    let env = TestEnv::new("process").await;
    let script =
        r#"trap 'echo "$ON_TERM"; exit 7' TERM; echo "$READY"; while :; do sleep 0.1; done"#;
    let mut process = env
        .command("sh")
        .args(["-c", script])
        .env("READY", "sh is ready")
        .env("ON_TERM", "sh got SIGTERM")
        .spawn("sh");

    assert!(
        process
            .wait_for_log("sh is ready", Duration::from_secs(30))
            .await,
        "the process did not start: {}",
        process.log()
    );
    let status = process.terminate().await;

    assert_eq!(status.code(), Some(7));
    assert!(
        process.log().contains("sh got SIGTERM"),
        "log: {}",
        process.log()
    );
    assert_eq!(process.log_path(), env.log_path("sh"));
}

#[tokio::test]
async fn process_kill_stops_a_process_that_ignores_term() {
    let env = TestEnv::new("process_kill").await;
    let script = r#"trap 'echo "$ON_TERM"' TERM; echo "$READY"; while :; do sleep 0.1; done"#;
    let mut process = env
        .command("sh")
        .args(["-c", script])
        .env("READY", "sh is ready")
        .env("ON_TERM", "sh ignores SIGTERM")
        .spawn("sh");
    assert!(
        process
            .wait_for_log("sh is ready", Duration::from_secs(30))
            .await
    );

    process.send_signal(Signal::SIGTERM);
    assert!(
        process
            .wait_for_log("sh ignores SIGTERM", Duration::from_secs(30))
            .await,
        "sh did not handle SIGTERM: {}",
        process.log()
    );
    assert_eq!(
        process.try_status(),
        None,
        "sh exited on a SIGTERM it handles"
    );
    let status = process.kill().await;

    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
}
