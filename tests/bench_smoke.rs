//! `eddy bench amqp` runs end to end against a real Eddy with both clients and accounts for
//! every message (a behaviour test, not a timed one).

mod common;

use std::process::Command;

use common::Server;

fn field(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].parse().unwrap()
}

fn run(s: &Server, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args([
            "bench",
            "amqp",
            "--uri",
            &s.uri(),
            "--seconds",
            "1",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log_text()
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bench_accounts_for_every_message() {
    let s = Server::start(&[]);
    for client in ["raw", "lapin"] {
        let json = run(&s, &["--client", client, "--confirm", "--persistent"]);
        let published = field(&json, "published");
        assert!(published > 0.0, "{client}: {json}");
        assert_eq!(field(&json, "consumed"), published, "{client}: {json}");
        assert_eq!(field(&json, "confirmed"), published, "{client}: {json}");
        assert!(field(&json, "e2e_p99_ms") > 0.0, "{client}: {json}");
    }
}

#[test]
fn kafka_bench_accounts_for_every_record() {
    let s = Server::start(&[]);
    for acks in ["-1", "1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args([
                "bench",
                "kafka",
                "--bootstrap",
                &format!("127.0.0.1:{}", s.kafka_port),
                "--seconds",
                "1",
                "--size",
                "200",
                "--batch",
                "50",
                "--partitions",
                "2",
                "--acks",
                acks,
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bench failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.log_text()
        );
        let json = String::from_utf8(out.stdout).unwrap();
        let records = field(&json, "records");
        assert!(records > 0.0, "{json}");
        assert_eq!(field(&json, "consumed"), records, "acks={acks}: {json}");
        assert!(field(&json, "e2e_p99_ms") > 0.0, "{json}");
    }
}
