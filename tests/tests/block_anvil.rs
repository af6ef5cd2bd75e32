//! Block tasks against a real EVM node: anvil, driven over JSON-RPC.
//!
//! Each test starts its own anvil, inserts a block task for eth, runs the real pipeline
//! (allocator, ingest, evaluate, notify, `devkit backend-stub`) and then makes the chain do
//! something: large transfers, ERC-20 `Transfer` logs from a hand-written contract, a stall
//! in block production, a reorg (`anvil_reorg`), pending and dropped transactions, a cut
//! connection. The expected alert ids are built from what anvil reports (hashes, block
//! numbers and times), never from ingest's output.

// Helpers panic on failure: a panic is the test failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod block_support;

use std::time::Duration;

use block_support::anvil::{
    block, block_number, emit_transfer, install_transfer_emitter, mine, mined_at, quantity, rpc,
    send_ether, CuttableProxy, ACCOUNT_0, ACCOUNT_1, ETHER,
};
use block_support::{
    alert_rows, block_alert_id, by_key, insert_block_task, start_pipeline, stub_messages_of,
    update_events_config, wait_for_alerts, AlertRow, Pipeline, ALERT_TIMEOUT,
};
use monitor_tests::{wait_for, wait_until, Anvil, TestEnv};
use serde_json::{json, Value};

/// ETH price given to ingest: 10,000 USD is then 5 ETH.
const ETH_PRICE: &str = "2000";
const THRESHOLD_USD: f64 = 10_000.0;
const COOLDOWN_SEC: u64 = 300;
/// Addresses of the hand-written Transfer emitters.
const TOKEN_A: &str = "0x00000000000000000000000000000000000000aa";
const TOKEN_B: &str = "0x00000000000000000000000000000000000000bb";
const RECEIVER: &str = "0x000000000000000000000000000000000000beef";

fn rules(extra: Value) -> Value {
    let mut rules = json!({
        "monitor_large_transactions": true,
        "transaction_amount_threshold": THRESHOLD_USD,
        "monitor_contract_events": true,
        "contract_addresses": [TOKEN_A],
        "event_signatures": ["Transfer(address,address,uint256)"]
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        rules[key] = value;
    }
    rules
}

/// Starts the pipeline on `node_ws_url` and waits until ingest follows the node, so that no
/// block the test produces comes before the subscription.
async fn follow(env: &TestEnv, node_ws_url: &str, subscriptions: usize) -> Pipeline {
    let pipeline = start_pipeline(
        env,
        &[
            ("EVM_WS_URL_ETH", node_ws_url),
            ("NATIVE_PRICE_USD_ETH", ETH_PRICE),
        ],
    )
    .await;
    let subscribed = wait_until(ALERT_TIMEOUT, Duration::from_millis(100), || async {
        pipeline
            .ingest
            .log()
            .matches("node connected and subscribed")
            .count()
            >= subscriptions
    })
    .await;
    assert!(
        subscribed,
        "ingest did not subscribe:\n{}",
        pipeline.ingest.log()
    );
    pipeline
}

fn large_tx_id(task_id: u64, tx_hash: &str, time_sec: u64) -> String {
    block_alert_id(
        task_id,
        tx_hash,
        "large_transaction",
        time_sec,
        COOLDOWN_SEC,
    )
}

fn log_id(task_id: u64, tx_hash: &str, log_index: u64, time_sec: u64) -> String {
    block_alert_id(
        task_id,
        &format!("{tx_hash}:{log_index}"),
        "contract_event",
        time_sec,
        COOLDOWN_SEC,
    )
}

/// Waits until the row of `key` has `state` and is pushed; returns the row as last read.
async fn wait_for_state(env: &TestEnv, task_id: u64, key: &str, state: &str) -> Option<AlertRow> {
    let reached = wait_for(ALERT_TIMEOUT, Duration::from_millis(200), || async {
        let row = by_key(&alert_rows(env, task_id).await).remove(key)?;
        (row.state == state && row.notify_status == "pushed").then_some(row)
    })
    .await;
    match reached {
        Some(row) => Some(row),
        None => by_key(&alert_rows(env, task_id).await).remove(key),
    }
}

/// Returns the states of the `alert_update` messages the backend stub received for one alert row.
fn updates_of(pipeline: &Pipeline, row_id: i64) -> Vec<String> {
    stub_messages_of(&pipeline.stub_file, "alert_update")
        .iter()
        .filter(|m| m["data"]["alertId"] == row_id)
        .filter_map(|m| m["data"]["state"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_and_stall_raise_alerts() {
    let env = TestEnv::new("anvil_transfers").await;
    let anvil = Anvil::start(&env, &[]).await;
    let node = anvil.http_url();
    install_transfer_emitter(&node, TOKEN_A).await;
    let rules = rules(json!({"monitor_new_blocks": true, "block_interval_threshold": 30}));
    let task_id = insert_block_task(&env, "eth", &rules).await;
    let _pipeline = follow(&env, &anvil.ws_url(), 1).await;

    let large = send_ether(&node, ACCOUNT_0, ACCOUNT_1, 10 * ETHER).await;
    let small = send_ether(&node, ACCOUNT_0, ACCOUNT_1, ETHER).await;
    let transfer = emit_transfer(&node, TOKEN_A, ACCOUNT_0, RECEIVER, 1_000).await;
    let (_, large_time) = mined_at(&node, &large).await;
    let (transfer_block, transfer_time) = mined_at(&node, &transfer).await;
    mined_at(&node, &small).await;
    let latest = block(&node, block_number(&node).await).await;
    assert_eq!(
        quantity(&latest["number"]),
        transfer_block,
        "nothing else was mined"
    );
    let stalled_at = quantity(&latest["timestamp"]) + 100;
    rpc(&node, "evm_setNextBlockTimestamp", json!([stalled_at])).await;
    mine(&node).await;
    let stalled_block = block_number(&node).await;
    assert_eq!(
        stalled_block,
        transfer_block + 1,
        "the stall ends with one block"
    );

    let expected = vec![
        large_tx_id(task_id, &large, large_time),
        log_id(task_id, &transfer, 0, transfer_time),
        block_alert_id(
            task_id,
            &stalled_block.to_string(),
            "block_event",
            stalled_at,
            COOLDOWN_SEC,
        ),
    ];
    let rows = wait_for_alerts(&env, task_id, &expected).await;
    let mut wanted = expected.clone();
    wanted.sort();
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        wanted,
        "the 1 ETH transfer {small} stays below the threshold"
    );

    let large_row = &rows[&expected[0]];
    assert_eq!(
        large_row.data["observed"],
        json!(20_000.0),
        "10 ETH at 2,000 USD"
    );
    assert_eq!(large_row.data["extra"]["from"], ACCOUNT_0);
    assert_eq!(large_row.data["extra"]["to"], ACCOUNT_1);
    let transfer_row = &rows[&expected[1]];
    assert_eq!(transfer_row.target_value, TOKEN_A);
    assert_eq!(transfer_row.data["extra"]["decoded"]["from"], ACCOUNT_0);
    assert_eq!(transfer_row.data["extra"]["decoded"]["to"], RECEIVER);
    assert_eq!(transfer_row.data["extra"]["decoded"]["amount"], "1000");
    let stall_row = &rows[&expected[2]];
    assert_eq!(
        stall_row.data["observed"],
        json!(100.0),
        "the stall lasted 100 s of chain time"
    );
    for row in rows.values() {
        assert_eq!(row.state, "confirmed", "state of {}", row.alert_key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_retracts_alerts_of_replaced_blocks() {
    let env = TestEnv::new("anvil_reorg").await;
    let anvil = Anvil::start(&env, &[]).await;
    let node = anvil.http_url();
    install_transfer_emitter(&node, TOKEN_A).await;
    let task_id = insert_block_task(&env, "eth", &rules(json!({}))).await;
    let pipeline = follow(&env, &anvil.ws_url(), 1).await;

    let large = send_ether(&node, ACCOUNT_0, ACCOUNT_1, 7 * ETHER).await;
    let transfer = emit_transfer(&node, TOKEN_A, ACCOUNT_0, RECEIVER, 5).await;
    let (large_block, large_time) = mined_at(&node, &large).await;
    let (_, transfer_time) = mined_at(&node, &transfer).await;
    let ids = [
        large_tx_id(task_id, &large, large_time),
        log_id(task_id, &transfer, 0, transfer_time),
    ];
    let rows = wait_for_alerts(&env, task_id, &ids).await;
    assert_eq!(rows.len(), 2, "both alerts raised before the reorg");

    let head = block_number(&node).await;
    let depth = head - large_block + 1;
    rpc(&node, "anvil_reorg", json!([depth, []])).await;
    mine(&node).await;

    for id in &ids {
        let row = wait_for_state(&env, task_id, id, "retracted").await;
        let row = row.unwrap_or_else(|| panic!("alert {id} disappeared"));
        assert_eq!(row.state, "retracted", "state of {id} after the reorg");
        assert_eq!(row.data["state"], "retracted", "alertData.state of {id}");
        let pushed = wait_until(ALERT_TIMEOUT, Duration::from_millis(200), || async {
            updates_of(&pipeline, row.id).contains(&"retracted".to_owned())
        })
        .await;
        assert!(
            pushed,
            "alert_update retracted of {id} reached the Java side"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_turn_provisional_into_confirmed() {
    let env = TestEnv::new("anvil_confirmations").await;
    let anvil = Anvil::start(&env, &[]).await;
    let node = anvil.http_url();
    let task_id = insert_block_task(&env, "eth", &rules(json!({"confirmations": 2}))).await;
    let pipeline = follow(&env, &anvil.ws_url(), 1).await;

    let large = send_ether(&node, ACCOUNT_0, ACCOUNT_1, 6 * ETHER).await;
    let (_, time) = mined_at(&node, &large).await;
    let id = large_tx_id(task_id, &large, time);
    let provisional = wait_for_state(&env, task_id, &id, "provisional").await;
    let provisional = provisional.expect("the alert is raised");
    assert_eq!(
        provisional.state, "provisional",
        "one block deep is not confirmed"
    );

    mine(&node).await;
    let one_deep = by_key(&alert_rows(&env, task_id).await);
    mine(&node).await;
    let confirmed = wait_for_state(&env, task_id, &id, "confirmed")
        .await
        .expect("the alert row");

    assert_eq!(confirmed.state, "confirmed", "confirmed two blocks later");
    assert_eq!(confirmed.id, provisional.id, "the same row changed state");
    assert!(
        one_deep.values().all(|r| r.alert_key == id),
        "no other alert"
    );
    let pushed = wait_until(ALERT_TIMEOUT, Duration::from_millis(200), || async {
        updates_of(&pipeline, confirmed.id).contains(&"confirmed".to_owned())
    })
    .await;
    assert!(pushed, "alert_update confirmed reached the Java side");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_transactions_confirm_or_retract() {
    let env = TestEnv::new("anvil_pending").await;
    let anvil = Anvil::start(&env, &[]).await;
    let node = anvil.http_url();
    let rules = rules(json!({"chain_specific": {"eth": {"monitor_pending_txs": true}}}));
    let task_id = insert_block_task(&env, "eth", &rules).await;
    rpc(&node, "evm_setAutomine", json!([false])).await;
    let pipeline = follow(&env, &anvil.ws_url(), 1).await;

    let mined = send_ether(&node, ACCOUNT_0, ACCOUNT_1, 8 * ETHER).await;
    let mined_id = wait_for_pending_alert(&env, task_id, &mined).await;
    mine(&node).await;
    let confirmed = wait_for_state(&env, task_id, &mined_id, "confirmed")
        .await
        .expect("the mined alert");
    assert_eq!(
        confirmed.state, "confirmed",
        "the pending transaction was mined"
    );

    let dropped = send_ether(&node, ACCOUNT_0, ACCOUNT_1, 9 * ETHER).await;
    let dropped_id = wait_for_pending_alert(&env, task_id, &dropped).await;
    rpc(&node, "anvil_dropTransaction", json!([dropped])).await;
    mine(&node).await;
    mine(&node).await;
    let retracted = wait_for_state(&env, task_id, &dropped_id, "retracted")
        .await
        .expect("the dropped alert");
    assert_eq!(
        retracted.state, "retracted",
        "the pending transaction was dropped"
    );

    let rows = alert_rows(&env, task_id).await;
    assert_eq!(rows.len(), 2, "one alert per transaction: {rows:?}");
    for (row_id, state) in [(confirmed.id, "confirmed"), (retracted.id, "retracted")] {
        let pushed = wait_until(ALERT_TIMEOUT, Duration::from_millis(200), || async {
            updates_of(&pipeline, row_id).contains(&state.to_owned())
        })
        .await;
        assert!(
            pushed,
            "alert_update {state} of row {row_id} reached the Java side"
        );
    }
}

/// Waits for the provisional alert of a pending transaction; returns its id.
async fn wait_for_pending_alert(env: &TestEnv, task_id: u64, tx_hash: &str) -> String {
    let prefix = format!("{task_id}:{tx_hash}:large_transaction:");
    let row = wait_for(ALERT_TIMEOUT, Duration::from_millis(200), || async {
        alert_rows(env, task_id)
            .await
            .into_iter()
            .find(|r| r.alert_key.starts_with(&prefix) && r.notify_status == "pushed")
    })
    .await
    .unwrap_or_else(|| panic!("no alert for pending transaction {tx_hash}"));
    assert_eq!(
        row.state, "provisional",
        "a pending transaction is provisional"
    );
    assert_eq!(
        row.data["extra"]["pending"], true,
        "alertData.extra.pending"
    );
    row.alert_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_blocks_are_fetched_after_reconnect() {
    let env = TestEnv::new("anvil_gap").await;
    let anvil = Anvil::start(&env, &[]).await;
    let node = anvil.http_url();
    install_transfer_emitter(&node, TOKEN_A).await;
    let proxy = CuttableProxy::start(format!("127.0.0.1:{}", anvil.port())).await;
    let task_id = insert_block_task(&env, "eth", &rules(json!({}))).await;
    let pipeline = follow(&env, &proxy.ws_url(), 1).await;

    let before = send_ether(&node, ACCOUNT_0, ACCOUNT_1, 5 * ETHER).await;
    let (_, before_time) = mined_at(&node, &before).await;
    let before_id = large_tx_id(task_id, &before, before_time);
    wait_for_alerts(&env, task_id, std::slice::from_ref(&before_id)).await;

    proxy.cut().await;
    let missed_tx = send_ether(&node, ACCOUNT_0, ACCOUNT_1, 11 * ETHER).await;
    let missed_log = emit_transfer(&node, TOKEN_A, ACCOUNT_0, RECEIVER, 77).await;
    mine(&node).await;
    proxy.restore();
    let resubscribed = wait_until(ALERT_TIMEOUT, Duration::from_millis(100), || async {
        pipeline
            .ingest
            .log()
            .matches("node connected and subscribed")
            .count()
            >= 2
    })
    .await;
    assert!(
        resubscribed,
        "ingest reconnected:\n{}",
        pipeline.ingest.log()
    );
    mine(&node).await;

    let (_, missed_tx_time) = mined_at(&node, &missed_tx).await;
    let (_, missed_log_time) = mined_at(&node, &missed_log).await;
    let expected = vec![
        before_id,
        large_tx_id(task_id, &missed_tx, missed_tx_time),
        log_id(task_id, &missed_log, 0, missed_log_time),
    ];
    let rows = wait_for_alerts(&env, task_id, &expected).await;
    let mut wanted = expected.clone();
    wanted.sort();
    assert_eq!(
        rows.keys().cloned().collect::<Vec<_>>(),
        wanted,
        "the blocks mined while cut off raised their alerts"
    );
    assert!(
        pipeline.ingest.log().contains("fetching missed blocks"),
        "the gap was filled by number"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_change_resubscribes_only_its_task() {
    let env = TestEnv::new("anvil_two_tasks").await;
    let anvil = Anvil::start(&env, &[]).await;
    let node = anvil.http_url();
    install_transfer_emitter(&node, TOKEN_A).await;
    install_transfer_emitter(&node, TOKEN_B).await;
    let changed = insert_block_task(&env, "eth", &rules(json!({}))).await;
    let unchanged = insert_block_task(&env, "eth", &rules(json!({}))).await;
    let pipeline = follow(&env, &anvil.ws_url(), 2).await;

    let first = emit_transfer(&node, TOKEN_A, ACCOUNT_0, RECEIVER, 1).await;
    let (_, first_time) = mined_at(&node, &first).await;
    for task_id in [changed, unchanged] {
        wait_for_alerts(&env, task_id, &[log_id(task_id, &first, 0, first_time)]).await;
    }

    update_events_config(
        &env,
        changed,
        &rules(json!({"contract_addresses": [TOKEN_B]})),
    )
    .await;
    let resubscribed = wait_until(ALERT_TIMEOUT, Duration::from_millis(100), || async {
        pipeline
            .ingest
            .log()
            .matches("node connected and subscribed")
            .count()
            >= 3
    })
    .await;
    assert!(
        resubscribed,
        "the changed task subscribed again:\n{}",
        pipeline.ingest.log()
    );
    let from_a = emit_transfer(&node, TOKEN_A, ACCOUNT_0, RECEIVER, 2).await;
    let from_b = emit_transfer(&node, TOKEN_B, ACCOUNT_0, RECEIVER, 3).await;
    let (_, a_time) = mined_at(&node, &from_a).await;
    let (_, b_time) = mined_at(&node, &from_b).await;

    let changed_expected = vec![
        log_id(changed, &first, 0, first_time),
        log_id(changed, &from_b, 0, b_time),
    ];
    let unchanged_expected = vec![
        log_id(unchanged, &first, 0, first_time),
        log_id(unchanged, &from_a, 0, a_time),
    ];
    let changed_rows = wait_for_alerts(&env, changed, &changed_expected).await;
    let unchanged_rows = wait_for_alerts(&env, unchanged, &unchanged_expected).await;
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert_eq!(
        changed_rows.keys().cloned().collect::<Vec<_>>(),
        sorted(changed_expected),
        "the changed task follows token B only"
    );
    assert_eq!(
        unchanged_rows.keys().cloned().collect::<Vec<_>>(),
        sorted(unchanged_expected),
        "the other task still follows token A"
    );

    let log = pipeline.ingest.log();
    let connects = |task_id: u64| {
        log.lines()
            .filter(|l| l.contains("node connected and subscribed"))
            .filter(|l| {
                l.contains(&format!("task_id={task_id} "))
                    || l.contains(&format!("task_id={task_id}}}"))
            })
            .count()
    };
    assert_eq!(connects(changed), 2, "the changed task connected again");
    assert_eq!(
        connects(unchanged),
        1,
        "the other task kept its subscription"
    );
}
