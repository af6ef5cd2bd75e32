-- The seven tables of the monitor, as the Java backend owns them in production.
-- Column names follow the original Python monitor's v2 schema; types are ours.

CREATE TABLE IF NOT EXISTS monitor_config_v2 (
    id                        BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    config_name               VARCHAR(128) NOT NULL,
    config_category           VARCHAR(32)  NULL,
    chain_type                VARCHAR(16)  NULL,
    source                    VARCHAR(32)  NULL,
    market_type               VARCHAR(32)  NULL,
    min_transaction_usd       DECIMAL(30, 8) NULL,
    cumulative_min_amount_usd DECIMAL(30, 8) NULL,
    time_interval             INT          NULL COMMENT 'seconds',
    top_holders_threshold     DECIMAL(10, 4) NULL COMMENT 'percent',
    events_config             MEDIUMTEXT   NULL COMMENT 'JSON rules',
    trigger_logic             VARCHAR(8)   NULL DEFAULT 'OR',
    notify_methods            VARCHAR(255) NULL,
    version                   BIGINT       NOT NULL DEFAULT 1,
    status                    TINYINT      NOT NULL DEFAULT 1,
    del_flag                  TINYINT      NOT NULL DEFAULT 0,
    create_time               DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    update_time               DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    KEY idx_config_update_time (update_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS monitor_task_v2 (
    id             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_name      VARCHAR(128) NOT NULL,
    task_type      VARCHAR(16)  NOT NULL COMMENT 'smart, batch or block',
    chain_type     VARCHAR(16)  NOT NULL COMMENT 'sol, eth or bsc',
    status         TINYINT      NOT NULL DEFAULT 1 COMMENT '1 running, 0 stopped',
    del_flag       TINYINT      NOT NULL DEFAULT 0,
    current_epoch  INT          NOT NULL DEFAULT 0,
    last_heartbeat DATETIME(3)  NULL,
    create_time    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    update_time    DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    KEY idx_task_update_time (update_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS monitor_task_config_v2 (
    id           BIGINT   NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_id      BIGINT   NOT NULL,
    config_id    BIGINT   NOT NULL,
    config_order INT      NOT NULL DEFAULT 0,
    create_time  DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uk_task_config (task_id, config_id),
    KEY idx_task_config_config (config_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS monitor_task_target_v2 (
    id           BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_id      BIGINT        NOT NULL,
    target_type  VARCHAR(16)   NOT NULL DEFAULT 'token',
    target_value VARCHAR(128)  NOT NULL COMMENT 'token contract address',
    token_name   VARCHAR(128)  NULL,
    token_symbol VARCHAR(64)   NULL,
    market_cap   DECIMAL(30, 4) NULL,
    pair_address VARCHAR(128)  NULL,
    source       VARCHAR(32)   NULL,
    batch_id     INT           NULL COMMENT 'batch number within the task',
    batch_order  INT           NULL COMMENT 'position inside the batch',
    priority     INT           NOT NULL DEFAULT 0,
    status       TINYINT       NOT NULL DEFAULT 1,
    create_time  DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    update_time  DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    KEY idx_target_task (task_id, status),
    KEY idx_target_update_time (update_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS monitor_batch_v2 (
    id              BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task_id         BIGINT       NOT NULL,
    batch_no        INT          NOT NULL,
    epoch           INT          NOT NULL,
    consumer_id     VARCHAR(128) NULL,
    status          VARCHAR(16)  NOT NULL DEFAULT 'pending',
    item_count      INT          NOT NULL DEFAULT 0,
    total_alerts    INT          NOT NULL DEFAULT 0,
    last_alert_time DATETIME(3)  NULL,
    error_count     INT          NOT NULL DEFAULT 0,
    last_error      VARCHAR(512) NULL,
    last_heartbeat  DATETIME(3)  NULL,
    worker_id       VARCHAR(128) NULL,
    worker_pid      INT          NULL,
    create_time     DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    update_time     DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uk_batch_task_epoch_no (task_id, epoch, batch_no)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS monitor_batch_item_v2 (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    batch_id    BIGINT NOT NULL COMMENT 'monitor_batch_v2.id',
    target_id   BIGINT NOT NULL,
    item_order  INT    NOT NULL,
    create_time DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY uk_batch_item (batch_id, target_id),
    KEY idx_batch_item_target (target_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS monitor_alert_log_v2 (
    id             BIGINT        NOT NULL AUTO_INCREMENT PRIMARY KEY,
    alert_key      VARCHAR(255)  NOT NULL,
    task_id        BIGINT        NOT NULL,
    config_id      BIGINT        NULL,
    config_version BIGINT        NULL,
    batch_id       BIGINT        NULL,
    target_id      BIGINT        NULL,
    chain_type     VARCHAR(16)   NULL,
    alert_type     VARCHAR(32)   NOT NULL,
    target_value   VARCHAR(128)  NULL,
    token_name     VARCHAR(128)  NULL,
    token_symbol   VARCHAR(64)   NULL,
    title          VARCHAR(512)  NULL,
    alert_data     JSON          NULL,
    state          VARCHAR(16)   NOT NULL DEFAULT 'confirmed',
    notify_status  VARCHAR(16)   NOT NULL DEFAULT 'pending',
    event_time     DATETIME(3)   NOT NULL,
    create_time    DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    update_time    DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uk_alert_key (alert_key),
    KEY idx_alert_task (task_id, event_time),
    KEY idx_alert_pending (notify_status, event_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
