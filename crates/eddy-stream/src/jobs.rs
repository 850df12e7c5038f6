//! Packaged jobs for `eddy run`.

use std::time::Duration;

use crate::connectors::{EddySink, EddySource, DEFAULT_BOOTSTRAP};
use crate::env::StreamEnv;
use crate::error::StreamError;
use crate::source::{Source, WatermarkStrategy};
use crate::window::Tumbling;

/// The packaged jobs and what they do.
pub const JOBS: &[(&str, &str)] = &[(
    "wordcount",
    "count words: --input-file FILE | --input-topic TOPIC [--from-latest] [--bounded] | \
     --input-queue QUEUE [--amqp URI] [--until-idle SECONDS]; [--window SECONDS] (tumbling \
     event-time windows; without it, running counts); [--output-topic TOPIC] (else printed); \
     [--bootstrap HOST:PORT]; [--job-name NAME] (default wordcount)",
)];

/// Run packaged job `name` with `args` (engine flags -w/-n/-p/-h/--checkpoint-dir/
/// --checkpoint-interval, then the job's own).
pub fn run(name: &str, args: Vec<String>) -> Result<(), StreamError> {
    // packaged jobs report to the local Eddy's management API unless told otherwise
    let env = StreamEnv::from_arg_list(std::iter::once(format!("eddy run {name}")).chain(args))?
        .report_by_default("http://127.0.0.1:15672");
    match name {
        "wordcount" => wordcount(env),
        other => Err(StreamError::Config(format!(
            "no packaged job {other:?}; there are: {}",
            JOBS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The job's own options: `--flag value` pairs and bare flags.
struct Opts(Vec<String>);

impl Opts {
    fn value(&self, flag: &str) -> Result<Option<String>, StreamError> {
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            if a == flag {
                return it
                    .next()
                    .cloned()
                    .map(Some)
                    .ok_or_else(|| StreamError::Config(format!("{flag} needs a value")));
            }
            if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return Ok(Some(v.to_owned()));
            }
        }
        Ok(None)
    }
    fn flag(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }
    fn check(&self, known_values: &[&str], known_flags: &[&str]) -> Result<(), StreamError> {
        let mut it = self.0.iter();
        while let Some(a) = it.next() {
            let name = a.split('=').next().unwrap_or(a);
            if known_values.contains(&name) {
                if !a.contains('=') {
                    it.next();
                }
            } else if !known_flags.contains(&a.as_str()) {
                return Err(StreamError::Config(format!("unknown argument {a:?}")));
            }
        }
        Ok(())
    }
}

#[cfg(feature = "amqp")]
fn queue_source(queue: &str, uri: &str, until_idle: Option<Duration>) -> Source<String> {
    let mut q = crate::queue::EddyQueue::named(queue).uri(uri);
    if let Some(d) = until_idle {
        q = q.until_idle(d);
    }
    q.into()
}

#[cfg(not(feature = "amqp"))]
fn queue_source(_queue: &str, _uri: &str, _until_idle: Option<Duration>) -> Source<String> {
    panic!("this build of eddy-stream has no AMQP support (feature `amqp`)")
}

fn split_words(line: String) -> Vec<String> {
    line.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn wordcount(env: StreamEnv) -> Result<(), StreamError> {
    let o = Opts(env.args().to_vec());
    o.check(
        &[
            "--input-file",
            "--input-topic",
            "--input-queue",
            "--amqp",
            "--until-idle",
            "--output-topic",
            "--window",
            "--bootstrap",
            "--job-name",
        ],
        &["--from-latest", "--bounded"],
    )?;
    // the name it reports under and keeps its checkpoints under
    let job_name = o.value("--job-name")?.unwrap_or_else(|| "wordcount".into());
    let queue = o.value("--input-queue")?;
    let amqp = o
        .value("--amqp")?
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let until_idle = match o.value("--until-idle")? {
        Some(s) => Some(
            s.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    StreamError::Config(format!("--until-idle takes seconds, not {s:?}"))
                })?,
        ),
        None => None,
    };
    let bootstrap = o
        .value("--bootstrap")?
        .unwrap_or_else(|| DEFAULT_BOOTSTRAP.to_owned());
    let file = o.value("--input-file")?;
    let topic = o.value("--input-topic")?;
    let output = o.value("--output-topic")?;
    let window = match o.value("--window")? {
        Some(s) => Some(
            s.parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| StreamError::Config(format!("--window takes seconds, not {s:?}")))?,
        ),
        None => None,
    };
    let (from_latest, bounded) = (o.flag("--from-latest"), o.flag("--bounded"));
    if [file.is_some(), topic.is_some(), queue.is_some()]
        .iter()
        .filter(|x| **x)
        .count()
        != 1
    {
        return Err(StreamError::Config(
            "give one of --input-file FILE, --input-topic TOPIC and --input-queue QUEUE".into(),
        ));
    }
    env.execute(&job_name, move |env| {
        let source: Source<String> = match (&file, &topic) {
            (Some(f), _) => Source::lines_of_file(f.clone()),
            (None, None) => {
                queue_source(queue.as_deref().expect("checked above"), &amqp, until_idle)
            }
            (None, Some(t)) => {
                let mut s = EddySource::topic(t)
                    .bootstrap(&bootstrap)
                    .idle_after(Duration::from_secs(5));
                if !from_latest {
                    s = s.from_earliest();
                }
                if bounded {
                    s = s.bounded();
                }
                s.watermarks(WatermarkStrategy::BoundedOutOfOrderness(
                    Duration::from_millis(200),
                ))
                .into()
            }
        };
        let words = env
            .source(source)
            .flat_map(split_words)
            .key_by(|w: &String| w.clone());
        match (window, &output) {
            (Some(w), Some(out)) => words
                .window(Tumbling::event_time(w))
                .count()
                .sink(EddySink::topic(out).bootstrap(&bootstrap)),
            (Some(w), None) => words.window(Tumbling::event_time(w)).count().print(),
            (None, Some(out)) => words
                .count()
                .sink(EddySink::topic(out).bootstrap(&bootstrap)),
            (None, None) => words.count().print(),
        }
    })
}
