//! The windowed word count against a live Eddy: lines from topic `lines`, words counted in
//! 5-second event-time windows, each window's counts written to topic `word-counts` exactly
//! once (with a checkpoint directory; resumed from it after a crash).
//!
//! ```text
//! cargo run --release --example windowed_wordcount -- [--bootstrap 127.0.0.1:9092] [--bounded] \
//!     [-w WORKERS] [--checkpoint-dir DIR]
//! ```

use std::time::Duration;

use eddy_stream::{EddySink, EddySource, StreamEnv, Tumbling, DEFAULT_BOOTSTRAP};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let env = StreamEnv::from_args()?;
    let args = env.args().to_vec();
    let bootstrap = args
        .iter()
        .position(|a| a == "--bootstrap")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_owned());
    let bounded = args.iter().any(|a| a == "--bounded");
    env.execute("windowed-wordcount", move |env| {
        let mut lines = EddySource::topic("lines")
            .bootstrap(&bootstrap)
            .from_earliest();
        if bounded {
            lines = lines.bounded();
        }
        env.source(lines)
            .flat_map(|line: String| {
                line.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .key_by(|w: &String| w.clone())
            .window(Tumbling::event_time(Duration::from_secs(5)))
            .count()
            .sink(EddySink::topic("word-counts").bootstrap(&bootstrap));
    })?;
    Ok(())
}
