//! What the API holds for clients is bounded, and an alarm holds its publishers too: a job
//! report is at most 64 KiB and at most 1,024 jobs are kept; a publish over HTTP while a
//! resource alarm is raised is refused (503), as AMQP publishers are held.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn job_reports_are_bounded_in_size_and_number() {
    let f = Fixture::new();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 << 10));
    let r = f.call(&json_request("PUT", "/api/jobs/huge", &big)).await;
    assert_eq!(r.status, 413, "{}", r.text());
    for i in 0..1024 {
        let r = f
            .call(&json_request(
                "PUT",
                &format!("/api/jobs/j{i}"),
                "{\"state\":\"running\"}",
            ))
            .await;
        assert_eq!(r.status, 204, "job {i}: {}", r.text());
    }
    let r = f
        .call(&json_request(
            "PUT",
            "/api/jobs/one-more",
            "{\"state\":\"running\"}",
        ))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    // a job that reports again is not one more
    let r = f
        .call(&json_request(
            "PUT",
            "/api/jobs/j7",
            "{\"state\":\"finished\"}",
        ))
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_publish_during_a_resource_alarm_is_refused() {
    // any process holds more than a byte: the memory alarm is raised at the first reading
    let f = Fixture::with(|c| c.memory_high_watermark = 1);
    let housekeeping = f.broker.spawn_housekeeping();
    let mut alarms = f.broker.alarms();
    let deadline = Instant::now() + DEADLINE;
    while !alarms.borrow_and_update().blocked() {
        assert!(Instant::now() < deadline, "no alarm");
        let _ = tokio::time::timeout(Duration::from_millis(100), alarms.changed()).await;
    }
    let r = f
        .call(&json_request(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            "{\"routing_key\":\"q\",\"payload\":\"x\",\"properties\":{}}",
        ))
        .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("memory alarm"), "{}", r.text());
    housekeeping.abort();
}
