//! A second `eddy serve` on a data directory in use refuses to start, naming the holder's pid
//! (two brokers on one directory lost confirmed messages and handed out Kafka offsets twice);
//! once the first is gone, even by kill -9, the directory is free again.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Server};

fn second_broker(dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--amqp", &format!("127.0.0.1:{}", free_port())])
        .args(["--kafka", &format!("127.0.0.1:{}", free_port())])
        .args(["--http", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn eddy")
}

/// Its exit and what it printed, or a failure if it still runs at the deadline.
fn exit_of(mut c: Child, within: Duration) -> Output {
    let deadline = Instant::now() + within;
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("the second broker kept running on a directory in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

#[test]
fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let mut first = Server::start(&[]);
    let pid = first.child.as_ref().unwrap().id();
    let out = exit_of(second_broker(first.data_dir()), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exited with success: {err}");
    assert!(err.contains("in use by another eddy"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    // the first goes on serving
    common::wait_listening(first.port, Duration::from_secs(5), &first.log);
    // kill -9 releases the lock with the process: the same directory starts again
    first.restart();
    common::wait_listening(first.port, Duration::from_secs(5), &first.log);
}
