//! `eddy bench nexmark`: Nexmark queries on the stream engine, with checkpoints on, reporting
//! events per second and per core (the figure Nexmark's Flink results are given in).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use eddy_stream::nexmark::{self, GeneratorConfig};
use eddy_stream::StreamEnv;
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `eddy bench nexmark`.
#[derive(clap::Args, Debug, Clone)]
pub struct NexmarkBenchArgs {
    /// Queries to run, comma-separated (q0, q1, q2, q5, q7)
    #[arg(long, default_value = "q0,q1,q2,q5,q7")]
    pub queries: String,
    /// Events per query
    #[arg(long, default_value_t = 20_000_000)]
    pub events: u64,
    /// Worker threads
    #[arg(short = 'w', long, default_value_t = 1)]
    pub workers: usize,
    /// Events per second of event time (Nexmark's default: 10 million)
    #[arg(long, default_value_t = 10_000_000)]
    pub rate: u64,
    /// Milliseconds between checkpoints
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_interval: u64,
    /// Where checkpoints go (a temporary directory by default)
    #[arg(long)]
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Run without checkpoints
    #[arg(long)]
    pub no_checkpoints: bool,
}

/// One query's figures.
pub struct NexmarkResult {
    /// q0, q1, …
    pub query: String,
    /// Events read.
    pub events: u64,
    /// Wall-clock time.
    pub seconds: f64,
    /// Records the query produced.
    pub results: u64,
}

/// Run the queries and print a line for each.
pub fn run_nexmark(args: NexmarkBenchArgs) -> Result<Vec<NexmarkResult>> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per_core = args.workers.min(cores).max(1) as f64;
    println!(
        "nexmark: {} events per query, {} worker(s) on {cores} core(s), checkpoints {}",
        args.events,
        args.workers,
        if args.no_checkpoints {
            "off".to_owned()
        } else {
            format!("every {} ms", args.checkpoint_interval)
        }
    );
    let mut out = Vec::new();
    for q in args
        .queries
        .split(',')
        .map(str::trim)
        .filter(|q| !q.is_empty())
    {
        if !nexmark::QUERIES.contains(&q) {
            bail!(
                "unknown query {q:?}; there are {}",
                nexmark::QUERIES.join(", ")
            );
        }
        let r = run_query(&args, q)?;
        let eps = r.events as f64 / r.seconds;
        println!(
            "{q}: {} events in {:.2} s = {:.0} events/s, {:.0} events/s per core; {} results",
            r.events,
            r.seconds,
            eps,
            eps / per_core,
            r.results
        );
        out.push(r);
    }
    Ok(out)
}

fn run_query(args: &NexmarkBenchArgs, query: &str) -> Result<NexmarkResult> {
    let tmp = tempfile_dir()?;
    let mut env = StreamEnv::workers(args.workers);
    if !args.no_checkpoints {
        let dir = args.checkpoint_dir.clone().unwrap_or_else(|| tmp.clone());
        env = env
            .checkpoint_dir(dir)
            .checkpoint_interval(Duration::from_millis(args.checkpoint_interval.max(1)));
    }
    let generated = Arc::new(AtomicU64::new(0));
    let results = Arc::new(AtomicU64::new(0));
    let cfg = GeneratorConfig { rate: args.rate };
    let (events, q) = (args.events, query.to_owned());
    let (g, r) = (generated.clone(), results.clone());
    let bar = ProgressBar::new(events);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} events {per_sec} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(query.to_owned());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let (bar, g, done) = (bar.clone(), generated.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                bar.set_position(g.load(Ordering::Relaxed).min(events));
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let start = Instant::now();
    env.execute(&format!("nexmark-{query}"), move |env| {
        let r = r.clone();
        nexmark::build(env, &q, events, cfg, g.clone(), move |_| {
            r.fetch_add(1, Ordering::Relaxed);
        })
        .expect("the query name was checked");
    })
    .with_context(|| format!("nexmark {query}"))?;
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(NexmarkResult {
        query: query.to_owned(),
        events,
        seconds,
        results: results.load(Ordering::Relaxed),
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("eddy-nexmark-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
