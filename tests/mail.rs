//! E-mail alerts through a real SMTP server on 127.0.0.1 (aiosmtpd from PyPI, started by the
//! test: `tests/support/smtp_sink.py`): a server that is down and comes back gets each mail
//! once; STARTTLS and implicit TLS with a private CA and a login; the password never stored.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use trainwatch::derive::{EventRow, Op};
use trainwatch::output::notify::{Notifier, NotifyConfig};
use trainwatch::output::receivers::SmtpTls;
use trainwatch::output::receivers::{ReceiverConfig, ReceiverKind};
use trainwatch::parse::Level;
use trainwatch::time::Age;

use crate::alerts::{fire_and_resolve, live_writer};
use crate::util::Db;

/// A running sink; killed on drop.
struct Sink {
    child: Child,
    out: PathBuf,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn required(what: &str) -> bool {
    crate::util::unavailable(&format!("skipping the e-mail test: {what} is missing"));
    false
}

fn have_aiosmtpd() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok || required("python3 with aiosmtpd (pip install aiosmtpd)")
}

impl Sink {
    fn start(port: u16, out: &Path, extra: &[&str]) -> Sink {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--out"])
            .arg(out)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP sink");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Sink {
            child,
            out: out.to_path_buf(),
        }
    }

    fn mails(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn smtp(url: &str, tls: Option<SmtpTls>) -> NotifyConfig {
    NotifyConfig {
        receivers: vec![ReceiverConfig {
            name: "oncall".into(),
            kind: ReceiverKind::Smtp,
            url: url.into(),
            from: Some("trainwatch <trainwatch@gpu-server-1.example>".into()),
            to: vec!["oncall@example.com".into(), "ml-team@example.com".into()],
            tls,
            timeout: Age::secs(5),
            ..ReceiverConfig::default()
        }],
        instance: Some("gpu-server-1".into()),
        page_url: Some("http://gpu-server-1:9750/".into()),
        ..NotifyConfig::default()
    }
}

/// Runs a notifier until `done`, a second more (for a duplicate to show), then stops it.
async fn notify_until(db: &Db, cfg: NotifyConfig, what: &str, mut done: impl FnMut() -> bool) {
    let stop = CancellationToken::new();
    let writer = trainwatch::store::WriterHandle::spawn(db.path.clone()).unwrap();
    let notifier = Notifier::new(
        cfg,
        db.path.clone(),
        writer.sender().unwrap(),
        Default::default(),
    )
    .unwrap();
    let task = tokio::spawn(notifier.run(Arc::new(tokio::sync::Notify::new()), stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; outbox: {:?}",
            db.text("SELECT group_concat(id || ' ' || attempts || ' ' || coalesce(last_error, '-') || ' ' || coalesce(delivered_at, '-'), '; ') FROM outbox")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    task.await.unwrap();
    tokio::task::spawn_blocking(|| writer.finish().unwrap())
        .await
        .unwrap();
}

fn field<'a>(mail: &'a Value, name: &str) -> &'a str {
    mail[name]
        .as_str()
        .unwrap_or_else(|| panic!("no {name} in {mail:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_down_then_up_gets_each_mail_once() {
    if !have_aiosmtpd() {
        return;
    }
    let db = Db::new();
    let port = crate::util::free_port();
    let cfg = smtp(&format!("smtp://127.0.0.1:{port}"), Some(SmtpTls::None));
    tokio::task::block_in_place(|| fire_and_resolve(&db));
    // Nobody listens: attempts fail and are retried, nothing is lost.
    notify_until(&db, cfg.clone(), "a failed attempt", || {
        db.count("SELECT count(*) FROM outbox WHERE attempts > 0") > 0
    })
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"),
        2
    );
    let err = db
        .text("SELECT last_error FROM outbox WHERE attempts > 0")
        .unwrap();
    assert!(
        err.to_lowercase().contains("connect") || err.contains("refused"),
        "{err}"
    );

    // The server comes back (and trainwatch restarts): each mail arrives once, in order.
    let out = db.dir.path().join("mails.jsonl");
    let sink = Sink::start(port, &out, &[]);
    notify_until(&db, cfg.clone(), "two mails", || sink.mails().len() >= 2).await;
    // Once more: nothing is sent again.
    notify_until(&db, cfg, "nothing", || true).await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(
        field(&mails[0], "subject"),
        "[trainwatch] FIRING: GpuTemperatureHigh (critical) GPU 0 on gpu-server-1"
    );
    assert_eq!(
        field(&mails[1], "subject"),
        "[trainwatch] RESOLVED: GpuTemperatureHigh (critical) GPU 0 on gpu-server-1"
    );
    assert_ne!(
        field(&mails[0], "message_id"),
        field(&mails[1], "message_id")
    );
    for m in &mails {
        assert_eq!(m["from"], "trainwatch@gpu-server-1.example");
        assert_eq!(
            m["to"],
            serde_json::json!(["oncall@example.com", "ml-team@example.com"])
        );
        assert_eq!(m["tls"], false);
        let body = field(m, "body");
        assert!(
            body.contains("Status page: http://gpu-server-1:9750/"),
            "{body}"
        );
    }
    let body = field(&mails[1], "body");
    assert!(body.contains("Resolved:   "), "{body}");
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"),
        0
    );
}

/// A private CA and a server certificate for 127.0.0.1, made with openssl.
fn certificates(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ok = run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=trainwatch test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]) && run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]) && run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    if !ok {
        required("openssl");
        return None;
    }
    Some((dir.join("ca.pem"), dir.join("srv.pem"), dir.join("srv.key")))
}

/// An OOM line of `yolo` after two ordinary ones, through a live writer: `GpuOutOfMemory`.
fn oom(db: &Db) {
    let writer = live_writer(db, &["oncall"], None);
    let now = trainwatch::time::now_ns();
    let line = |i: i64, level, kind, message: &str| {
        Op::Event(EventRow {
            ts: now + i * 1_000_000,
            container: Arc::from("yolo"),
            stream: "stderr",
            seq: 0,
            key_ts: now + i * 1_000_000,
            level,
            kind,
            message: message.into(),
            context: "{}".into(),
        })
    };
    writer
        .send(vec![
            line(0, Level::Info, "log", "Epoch 3/10 started"),
            line(1, Level::Warning, "log", "WARNING: low free GPU memory"),
            line(
                2,
                Level::Error,
                "gpu_oom",
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
            ),
        ])
        .unwrap();
    writer.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_implicit_tls_with_a_private_ca_and_a_login() {
    if !have_aiosmtpd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = certificates(dir.path()) else {
        return;
    };
    let password = "pa55-w0rd-never-stored";
    // SAFETY: set once, before any thread reads it; the variable is only this test's.
    unsafe { std::env::set_var("TW_TEST_SMTP_PASSWORD", password) };
    for (mode, scheme, flag) in [
        (SmtpTls::Starttls, "smtp", "--starttls"),
        (SmtpTls::Tls, "smtps", "--tls"),
    ] {
        let db = Db::new();
        tokio::task::block_in_place(|| oom(&db));
        let port = crate::util::free_port();
        let out = db.dir.path().join("mails.jsonl");
        let sink = Sink::start(
            port,
            &out,
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                flag,
                "--user",
                "trainwatch",
                "--password",
                password,
            ],
        );
        let mut cfg = smtp(&format!("{scheme}://127.0.0.1:{port}"), Some(mode));
        let r = &mut cfg.receivers[0];
        r.username = Some("trainwatch".into());
        r.password_env = Some("TW_TEST_SMTP_PASSWORD".into());
        r.ca_file = Some(ca.clone());
        notify_until(&db, cfg.clone(), "the mail", || !sink.mails().is_empty()).await;
        let mails = sink.mails();
        assert_eq!(mails.len(), 1, "{mode:?}: {mails:#?}");
        let m = &mails[0];
        assert_eq!(m["tls"], true, "{mode:?}");
        assert_eq!(m["auth"], "trainwatch");
        assert_eq!(
            field(m, "subject"),
            "[trainwatch] FIRING: GpuOutOfMemory (high) yolo on gpu-server-1"
        );
        let body = field(m, "body");
        // The evidence: the container's last lines, oldest first, up to the OOM.
        let (a, b, c) = (
            body.find("Epoch 3/10 started").expect(body),
            body.find("WARNING: low free GPU memory").expect(body),
            body.find("ERROR    torch.OutOfMemoryError").expect(body),
        );
        assert!(a < b && b < c, "{body}");
        // The password is in no table.
        assert!(
            !crate::util::dump_all(&db).contains(password),
            "the password is stored"
        );
        // A wrong password is refused by the server (535, a permanent answer): the attempt is
        // recorded with the server's answer and without the password.
        let db2 = Db::new();
        tokio::task::block_in_place(|| oom(&db2));
        let mut bad = cfg.clone();
        bad.receivers[0].password_env = None;
        bad.receivers[0].password = Some("wrong-secret".into());
        notify_until(&db2, bad, "a refused login", || {
            db2.count("SELECT count(*) FROM outbox WHERE attempts > 0") > 0
        })
        .await;
        let err = db2.text("SELECT last_error FROM outbox").unwrap();
        assert!(!err.contains("wrong-secret"), "{err}");
        assert!(
            err.contains("535") || err.contains("credentials invalid"),
            "{err}"
        );
        assert_eq!(sink.mails().len(), 1);
    }
}
