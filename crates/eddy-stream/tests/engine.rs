//! Running jobs: arguments, several workers, and a failing job ending with an error instead of
//! hanging.

use std::sync::Arc;

use eddy_stream::{Source, StreamEnv, StreamError};
use parking_lot::Mutex;

fn args(list: &[&str]) -> Vec<String> {
    std::iter::once("job")
        .chain(list.iter().copied())
        .map(str::to_owned)
        .collect()
}

#[test]
fn engine_arguments_are_taken_and_the_rest_left_for_the_job() {
    let env = StreamEnv::from_arg_list(args(&["input.txt", "-w", "3", "--out=x"])).unwrap();
    assert_eq!(env.args(), ["input.txt", "--out=x"]);
    for bad in [
        &["-w"][..],
        &["-w", "many"],
        &["-w", "0"],
        &["-n", "2", "-p", "2"],
    ] {
        let err = StreamEnv::from_arg_list(args(bad)).err().expect("refused");
        assert!(matches!(err, StreamError::Config(_)), "{bad:?}: {err}");
    }
    let err = StreamEnv::from_arg_list(args(&["-n", "2", "-h", "/nonexistent/hosts"]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("/nonexistent/hosts"), "{err}");
}

#[test]
fn every_record_is_counted_once_on_several_workers() {
    for workers in [1, 2, 3] {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        StreamEnv::workers(workers)
            .execute("spread", move |env| {
                // every worker generates its own share
                env.source(Source::generator(|index, peers| {
                    (0..10_000u64).filter(move |i| *i as usize % peers == index)
                }))
                .filter(|i| i % 2 == 0)
                .key_by(|i| i % 10)
                .count()
                .collect(o.clone());
            })
            .unwrap();
        let out = out.lock();
        assert_eq!(out.len(), 5_000, "{workers} workers");
        for key in [0u64, 2, 4, 6, 8] {
            let last = out.iter().filter(|(k, _)| *k == key).map(|(_, n)| *n).max();
            assert_eq!(last, Some(1_000), "{workers} workers, key {key}");
        }
    }
}

#[test]
fn a_panicking_function_fails_the_job_with_its_message() {
    let err = StreamEnv::workers(2)
        .execute("failing", |env| {
            env.source(Source::from_vec((0..100_000u64).collect()))
                .key_by(|i| *i)
                .into_stream()
                .map(|(_, i)| {
                    if i == 5_000 {
                        panic!("bad record {i}")
                    } else {
                        i
                    }
                })
                .sink(eddy_stream::Sink::new(|_, _| {}));
        })
        .expect_err("the job fails");
    assert!(err.to_string().contains("bad record 5000"), "{err}");
}

#[test]
fn json_lines_are_read_and_a_bad_line_is_named() {
    #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
    struct Order {
        item: String,
        qty: u64,
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders.jsonl");
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&format!("{{\"item\":\"i{}\",\"qty\":{}}}\n", i % 3, i));
        if i == 50 {
            text.push('\n');
        }
    }
    std::fs::write(&path, &text).unwrap();
    for workers in [1, 2] {
        let total = Arc::new(Mutex::new(0u64));
        let t = total.clone();
        let p = path.clone();
        StreamEnv::workers(workers)
            .execute("json", move |env| {
                let t = t.clone();
                env.source(Source::<Order>::json_lines_of_file(p.clone()))
                    .sink(eddy_stream::Sink::new(move |_, o: Order| {
                        *t.lock() += o.qty
                    }));
            })
            .unwrap();
        assert_eq!(*total.lock(), (0..100).sum::<u64>());
    }
    std::fs::write(
        &path,
        "{\"item\":\"a\",\"qty\":1}\n{\"item\":\"b\",\"qty\":\"many\"}\n",
    )
    .unwrap();
    let p = path.clone();
    let err = StreamEnv::workers(1)
        .execute("json", move |env| {
            env.source(Source::<Order>::json_lines_of_file(p.clone()))
                .sink(eddy_stream::Sink::new(|_, _| {}));
        })
        .expect_err("fails");
    assert!(err.to_string().contains("line 2"), "{err}");
    let err = StreamEnv::workers(1)
        .execute("json", |env| {
            env.source(Source::lines_of_file("/nonexistent/input.txt"))
                .sink(eddy_stream::Sink::new(|_, _| {}));
        })
        .expect_err("fails");
    assert!(err.to_string().contains("/nonexistent/input.txt"), "{err}");
}
