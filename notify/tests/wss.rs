//! `wss://` with the notify binary: it verifies the server's certificate against the system's
//! root certificates (rustls with rustls-native-certs), sends the bearer token over TLS, and
//! refuses a server whose certificate no root signed.
//!
//! rustls-native-certs reads the system's roots from `SSL_CERT_FILE` when that variable is set,
//! so the test gives the notify process a file with a test CA as its system store. The CA and
//! the certificate for `localhost` are made with the `openssl` command. A TLS endpoint in the
//! test forwards the decrypted bytes to devkit's backend-stub.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on a broken set-up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{price_alert, Env, Stub};
use monitor_core::settings::Redacted;
use monitor_devkit::backend_stub::BackendStub;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("failed to run openssl (is it installed?): {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Creates `ca.pem` (a test root named `root_name`) and `server.pem` / `server.key` (a
/// certificate for `localhost` and 127.0.0.1 signed by that root) in `dir`.
fn make_certificates(dir: &Path, root_name: &str) {
    let root_subject = format!("/CN={root_name}");
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509", "-days", "2", "-subj", &root_subject][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &[
                "req",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ][..],
            &ec,
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

/// Accepts TLS on a free port with `server.pem` and forwards every connection to `backend`.
async fn tls_endpoint(dir: &Path, backend: std::net::SocketAddr, stop: CancellationToken) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();

    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap(),
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake: nothing to forward.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut plain = TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}

async fn pending_rows(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM monitor_alert_log_v2 WHERE notify_status = 'pending'")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// The stub behind the TLS endpoint, requiring the token `s3cr3t`, and the endpoint's port.
async fn stub_behind_tls(env: &Env, certs: &Path, stop: &CancellationToken) -> (Stub, u16) {
    let stub = Stub::start_with(
        "127.0.0.1:0".parse().unwrap(),
        &env.test.work_dir().join("stub"),
        BackendStub {
            token: Some(Redacted("s3cr3t".into())),
            ..BackendStub::default()
        },
    )
    .await;
    let port = tls_endpoint(certs, stub.addr, stop.clone()).await;
    (stub, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_verifies_server_against_system_roots() {
    let env = Env::new("wss_roots").await;
    let certs: PathBuf = env.test.work_dir().join("certs");
    make_certificates(&certs, "monitor test root");
    let stop = CancellationToken::new();
    let (stub, port) = stub_behind_tls(&env, &certs, &stop).await;

    let mut notify = env
        .notify_process(&format!("wss://localhost:{port}/websocket/monitor"))
        .env("WS_TOKEN", "s3cr3t")
        .env("SSL_CERT_FILE", certs.join("ca.pem"))
        .spawn("notify");
    let alert = price_alert("4:0xc02a:price_change:1", 1_700_000_000_000);
    env.publish_alert(&alert, &alert.id).await;

    let pushed = stub.wait_for("alert", 1).await;
    assert_eq!(pushed[0]["data"]["alertData"]["alertKey"], alert.id);
    assert!(
        notify
            .wait_for_log("java websocket greeted the client", Duration::from_secs(30))
            .await,
        "{}",
        notify.log()
    );
    stub.assert_no_violations();

    notify.terminate().await;
    stop.cancel();
    stub.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_rejects_certificate_of_unknown_root() {
    let env = Env::new("wss_unknown").await;
    let certs: PathBuf = env.test.work_dir().join("certs");
    make_certificates(&certs, "monitor test root");
    // A second root that did not sign the server's certificate.
    let other = env.test.work_dir().join("other");
    make_certificates(&other, "another test root");
    let stop = CancellationToken::new();
    let (stub, port) = stub_behind_tls(&env, &certs, &stop).await;

    let mut notify = env
        .notify_process(&format!("wss://localhost:{port}/websocket/monitor"))
        .env("WS_TOKEN", "s3cr3t")
        .env("SSL_CERT_FILE", other.join("ca.pem"))
        .spawn("notify");
    let alert = price_alert("4:0xc02a:price_change:2", 1_700_000_000_000);
    env.publish_alert(&alert, &alert.id).await;

    assert!(
        notify
            .wait_for_log("java websocket unavailable", Duration::from_secs(60))
            .await,
        "{}",
        notify.log()
    );
    let log = notify.log();
    assert!(
        log.contains("invalid peer certificate: UnknownIssuer"),
        "the failure names the certificate:\n{log}"
    );
    env.wait_acked(
        &env.subjects.alerts_stream(),
        monitor_core::Subjects::NOTIFY_ALERTS_CONSUMER,
        1,
    )
    .await;
    assert_eq!(pending_rows(&env).await, 1, "the alert waits in the outbox");
    assert!(stub.received("alert").is_empty());

    notify.terminate().await;
    stop.cancel();
    stub.stop().await;
    env.cleanup().await;
}
