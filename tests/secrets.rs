//! Who leaks: a container followed live writes secrets into its logs; nothing of them is
//! stored, `SecretsInLogs` pages once per kind naming the container (never the value), and
//! `/metrics` and `status` count the redactions by kind.

use std::time::{Duration, Instant};

use crate::alerts::Receiver;
use crate::docker::{Lab, docker_ready};
use crate::util::{bin, dump_all, free_port};

#[test]
fn a_service_writing_secrets_is_named_per_kind_and_counted() {
    if !docker_ready() {
        return;
    }
    let rx = Receiver::start(0, 0);
    let mut lab = Lab::new(
        "leak",
        &format!(
            "stats = false\n[probes]\nnvidia_smi = \"\"\ndata_root = \"\"\n\n[[notify.receivers]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
            rx.url
        ),
    );
    let port = free_port();
    lab.watch_args = vec!["--listen".into(), format!("127.0.0.1:{port}")];
    lab.start_watch(&[]);
    let image = "iVBORw0KGgo".repeat(40);
    let lines = [
        // Two passwords (a connection URL, a glued env name), one JWT, one image at INFO.
        r#"{"timestamp":"2026-12-07T10:00:00Z","level":"INFO","service":"annotation_queue","message":"connecting to amqp://queue:pa55w0rdX@rabbit:5552/"}"#.to_string(),
        "INFO:annotation_queue:backup with PGPASSWORD=pgs3cretX psql -h db".to_string(),
        "WARNING:annotation_queue:upload refused (token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlWA)".to_string(),
        format!("INFO:annotation_queue:message payload={image} id=3"),
        // An image in a DEBUG line is redacted, not counted: it was asked for.
        format!("DEBUG:annotation_queue:dump payload={image}"),
    ];
    let script = lines
        .iter()
        .map(|l| format!("echo '{l}'"))
        .collect::<Vec<_>>()
        .join("; ");
    let c = lab.run("queue", false, &format!("{script}; sleep 30"));
    // One page per kind: password, token, image payload.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.received().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "pages: {:?}\n{}",
            rx.received(),
            lab.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let pages = rx.received();
    let mut kinds: Vec<String> = pages
        .iter()
        .map(|p| {
            assert_eq!(p["event"], "firing", "{p}");
            assert_eq!(p["alert"]["alertname"], "SecretsInLogs", "{p}");
            assert_eq!(p["alert"]["severity"], "low", "{p}");
            assert_eq!(p["alert"]["labels"]["container"], c.as_str(), "{p}");
            let s = p["alert"]["summary"].as_str().unwrap();
            assert!(s.contains(&c) && s.contains("first seen 20"), "{s}");
            p["alert"]["labels"]["kind"].as_str().unwrap().to_string()
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["image_payload", "password", "token"]);
    let metrics = crate::util::get_metrics(port);
    for (kind, n) in [("password", 2), ("token", 1), ("image_payload", 1)] {
        let want =
            format!("trainwatch_redactions_total{{container=\"{c}\",kind=\"{kind}\"}} {n}\n");
        assert!(metrics.contains(&want), "{want} not in\n{metrics}");
    }
    assert!(!metrics.contains("kind=\"key\""), "{metrics}");
    let status = bin(&["status"], &lab.db.path);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.contains("redacted 1 token, 2 password, 1 image payload"),
        "{status}"
    );
    lab.stop_watch();
    let dump = dump_all(&lab.db);
    for secret in [
        "pa55w0rdX",
        "pgs3cretX",
        "c2lnbmF0dXJlWA",
        "iVBORw0KGgoiVBORw0KGgo",
    ] {
        assert!(!dump.contains(secret), "{secret} stored:\n{dump}");
    }
    assert!(
        !rx.received()
            .iter()
            .any(|p| p.to_string().contains("pa55w0rdX"))
    );
}
