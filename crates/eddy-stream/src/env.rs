//! Running a job: `StreamEnv` holds how (workers, processes), `Env` is what the job's builder
//! closure gets on every worker to create sources.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use timely::dataflow::{ProbeHandle, Scope};
use timely::CommunicationConfig;

use std::path::PathBuf;

use crate::checkpoint::{Checkpoints, FINAL};
use crate::error::StreamError;
use crate::event::now_ms;
use crate::operators::{Ctx, DataStream, Upstream};
use crate::report::{JobStats, ReportTo, Reporter};
use crate::source::Source;

/// How a job runs: worker threads per process, and processes (timely's `-w`, `-n`, `-p`,
/// `-h` arguments), plus the job's own arguments.
pub struct StreamEnv {
    config: timely::Config,
    args: Vec<String>,
    checkpoint_dir: Option<PathBuf>,
    checkpoint_interval: Duration,
    report: Option<ReportTo>,
    no_report: bool,
}

/// How often sources end an epoch (and so how often checkpoints are taken), by default.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

impl StreamEnv {
    /// From the process arguments: `-w N` worker threads per process, `-n N` processes, `-p I`
    /// this process's index, `-h FILE` the hosts file (one `host:port` per process; without
    /// it, process `i` listens on `localhost:2101+i`). Everything else is left for the job
    /// ([`StreamEnv::args`]).
    pub fn from_args() -> Result<StreamEnv, StreamError> {
        Self::from_arg_list(std::env::args())
    }

    /// From an explicit argument list (the first element is the program name).
    pub fn from_arg_list(args: impl IntoIterator<Item = String>) -> Result<StreamEnv, StreamError> {
        let mut it = args.into_iter().skip(1);
        let (mut threads, mut processes, mut process) = (1usize, 1usize, 0usize);
        let mut hostfile: Option<String> = None;
        let mut checkpoint_dir: Option<PathBuf> = None;
        let mut checkpoint_interval = DEFAULT_CHECKPOINT_INTERVAL;
        let mut report = None;
        let mut no_report = false;
        let mut rest = Vec::new();
        let number = |flag: &str, v: Option<String>| -> Result<usize, StreamError> {
            let v = v.ok_or_else(|| StreamError::Config(format!("{flag} needs a value")))?;
            v.parse::<usize>()
                .map_err(|_| StreamError::Config(format!("{flag} takes a number, not {v:?}")))
        };
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (a.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next());
            match flag.as_str() {
                "-w" | "--workers" | "--threads" => threads = number(&flag, value())?,
                "-n" | "--processes" => processes = number(&flag, value())?,
                "-p" | "--process" => process = number(&flag, value())?,
                "-h" | "--hostfile" => {
                    hostfile = Some(
                        value()
                            .ok_or_else(|| StreamError::Config(format!("{flag} needs a file")))?,
                    )
                }
                "--checkpoint-dir" => {
                    checkpoint_dir = Some(
                        value()
                            .ok_or_else(|| {
                                StreamError::Config(format!("{flag} needs a directory"))
                            })?
                            .into(),
                    )
                }
                "--checkpoint-interval" => {
                    checkpoint_interval =
                        Duration::from_millis(number(&flag, value())?.max(1) as u64)
                }
                "--report" => {
                    let url = value()
                        .ok_or_else(|| StreamError::Config(format!("{flag} needs a URL")))?;
                    report = Some(ReportTo::parse(&url).map_err(StreamError::Config)?);
                }
                "--no-report" => no_report = true,
                _ => rest.push(a),
            }
        }
        if threads == 0 || processes == 0 {
            return Err(StreamError::Config(
                "workers and processes must be at least 1".into(),
            ));
        }
        if process >= processes {
            return Err(StreamError::Config(format!(
                "process index {process} is not below the number of processes {processes}"
            )));
        }
        let communication = if processes > 1 {
            let addresses: Vec<String> = match &hostfile {
                Some(f) => {
                    let text = std::fs::read_to_string(f).map_err(|e| {
                        StreamError::Config(format!("cannot read the hosts file {f}: {e}"))
                    })?;
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .take(processes)
                        .map(str::to_owned)
                        .collect()
                }
                None => (0..processes)
                    .map(|i| format!("localhost:{}", 2101 + i))
                    .collect(),
            };
            if addresses.len() < processes {
                return Err(StreamError::Config(format!(
                    "the hosts file lists {} addresses for {processes} processes",
                    addresses.len()
                )));
            }
            CommunicationConfig::Cluster {
                threads,
                process,
                addresses,
                report: false,
                zerocopy: false,
            }
        } else if threads > 1 {
            CommunicationConfig::Process(threads)
        } else {
            CommunicationConfig::Thread
        };
        Ok(StreamEnv {
            config: timely::Config {
                communication,
                worker: timely::WorkerConfig::default(),
            },
            args: rest,
            checkpoint_dir,
            checkpoint_interval,
            report,
            no_report,
        })
    }

    /// `n` worker threads in this process.
    pub fn workers(n: usize) -> StreamEnv {
        StreamEnv {
            config: if n <= 1 {
                timely::Config::thread()
            } else {
                timely::Config::process(n)
            },
            args: Vec::new(),
            checkpoint_dir: None,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            report: None,
            no_report: false,
        }
    }

    /// Take checkpoints in `dir` (a directory every process of the job can reach), and resume
    /// from the latest complete one found there.
    pub fn checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> StreamEnv {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    /// How often to take a checkpoint (default 1 s).
    pub fn checkpoint_interval(mut self, every: Duration) -> StreamEnv {
        self.checkpoint_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Report the running job to Eddy's management API at `url` (`http://host:port`; user and
    /// password from `EDDY_USER`/`EDDY_PASSWORD`, default guest/guest), unless `--no-report`
    /// was given; `--report URL` on the command line wins over this.
    pub fn report_by_default(mut self, url: &str) -> StreamEnv {
        if self.report.is_none() && !self.no_report {
            self.report = ReportTo::parse(url).ok();
        }
        self
    }

    /// The arguments not taken by the engine (for the job itself).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Build the job on every worker with `build` and run it until every source is exhausted.
    pub fn execute<F>(self, name: &str, build: F) -> Result<(), StreamError>
    where
        F: Fn(&mut Env<'_>) + Send + Sync + 'static,
    {
        let name = name.to_owned();
        let cluster = matches!(
            self.config.communication,
            CommunicationConfig::Cluster { .. }
        );
        if cluster {
            exit_when_a_peer_is_lost();
        }
        let checkpoint = self
            .checkpoint_dir
            .clone()
            .map(|d| (d, self.checkpoint_interval));
        // the first worker failure, shared so the other workers stop instead of waiting
        // forever for a worker that is gone
        let failed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let f = failed.clone();
        let stats = Arc::new(JobStats::default());
        let (process_index, processes, threads) = match &self.config.communication {
            CommunicationConfig::Cluster {
                threads,
                process,
                addresses,
                ..
            } => (*process, addresses.len(), *threads),
            CommunicationConfig::Process(n) => (0, 1, *n),
            _ => (0, 1, 1),
        };
        let reporter = self.report.clone().map(|to| {
            let name = if processes > 1 {
                format!("{name}/p{process_index}")
            } else {
                name.clone()
            };
            Reporter::start(
                to,
                &name,
                stats.clone(),
                serde_json::json!({
                    "workers": threads * processes,
                    "workers_in_process": threads,
                    "processes": processes,
                    "process": process_index,
                    "checkpoint_dir": self.checkpoint_dir.as_ref().map(|d| d.display().to_string()),
                    "pid": std::process::id(),
                    "started_at": now_ms(),
                }),
            )
        });
        let st = stats.clone();
        let guards = timely::execute(self.config, move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_worker(worker, &name, checkpoint.as_ref(), &build, &f, &st)
            }));
            let err = match run {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(payload) => Some(
                    payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "a worker panicked".to_owned()),
                ),
            };
            if let Some(err) = err {
                let first = f.lock().is_none();
                f.lock().get_or_insert(format!("worker {index}: {err}"));
                if cluster && first {
                    // timely cannot take a process out of a running cluster: the peers would
                    // wait for this one forever. Ending the process ends its connections, and
                    // the peers end too (see exit_when_a_peer_is_lost).
                    tracing::error!(worker = index, "the job failed: {err}");
                    eprintln!("error: worker {index}: {err}");
                    std::process::exit(1);
                }
            }
            if f.lock().is_some() {
                // stop this worker's part of the job for good: timely would otherwise keep
                // stepping it (saving state past the failure) until it finished
                for id in worker.installed_dataflows() {
                    worker.drop_dataflow(id);
                }
            }
            let _ = peers;
        })
        .map_err(StreamError::Execution)?;
        let joined: Result<(), String> = guards.join().into_iter().collect();
        let outcome = match (failed.lock().take(), joined) {
            (Some(msg), _) | (None, Err(msg)) => Err(StreamError::Execution(msg)),
            (None, Ok(())) => Ok(()),
        };
        if let Some(r) = reporter {
            r.finish(if outcome.is_ok() {
                "finished"
            } else {
                "failed"
            });
        }
        outcome
    }
}

/// In a job of several processes, a lost connection to a peer process (it failed or was
/// killed) ends this process with status 1 and a message, instead of leaving its workers
/// waiting for progress that cannot come. (Timely's network threads panic then; the workers
/// are not told.)
fn exit_when_a_peer_is_lost() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let network = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("timely:recv") || n.starts_with("timely:send"));
            if network {
                let what = info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| {
                        info.payload()
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                    })
                    .unwrap_or_default();
                tracing::error!("lost the connection to a peer process: {what}");
                eprintln!(
                    "error: lost the connection to a peer process of the job (it failed or was \
                     stopped): {what}"
                );
                std::process::exit(1);
            }
            previous(info)
        }));
    });
}

/// One worker: build the job, run it, mark checkpoints complete and let the sinks commit.
fn run_worker<F: Fn(&mut Env<'_>)>(
    worker: &mut timely::worker::Worker,
    name: &str,
    checkpoint: Option<&(PathBuf, Duration)>,
    build: &F,
    failed: &Mutex<Option<String>>,
    stats: &Arc<JobStats>,
) -> Result<(), StreamError> {
    let (index, peers) = (worker.index(), worker.peers());
    let checkpoints = Rc::new(match checkpoint {
        Some((dir, interval)) => Checkpoints::open(dir, name, index, peers, *interval)?,
        None => Checkpoints::off(index),
    });
    let ctx = Rc::new(Ctx {
        job: name.to_owned(),
        probe: ProbeHandle::new(),
        checkpoints: checkpoints.clone(),
        commits: RefCell::new(Vec::new()),
        sinks: std::cell::Cell::new(0),
        stats: stats.clone(),
    });
    worker.dataflow_named::<u64, _, _>(name, |scope| {
        let mut env = Env {
            scope,
            ctx: ctx.clone(),
        };
        build(&mut env);
    });
    // the latest epoch this worker has seen complete; at start, the restored one is
    // announced again so that sinks commit what its checkpoint held
    let mut last: Option<u64> = None;
    loop {
        if failed.lock().is_some() {
            return Ok(());
        }
        let more = worker.step_or_park(Some(Duration::from_millis(50)));
        if failed.lock().is_some() {
            // another worker failed during this step: mark nothing more
            return Ok(());
        }
        let complete = ctx.probe.with_frontier(|f| match f.first() {
            None => Some(FINAL),
            Some(0) => None,
            Some(&m) => Some(m - 1),
        });
        if complete > last {
            let epoch = complete.expect("greater than something");
            checkpoints.mark_complete(epoch)?;
            if checkpoints.enabled() {
                stats.checkpointed(epoch);
            }
            for commit in ctx.commits.borrow_mut().iter_mut() {
                commit(epoch);
            }
            last = complete;
        }
        if !more {
            break;
        }
    }
    if last == Some(FINAL) {
        checkpoints.finish(peers)?;
    }
    Ok(())
}

/// A worker's view while the job is built: it creates sources.
pub struct Env<'s> {
    pub(crate) scope: Scope<'s, u64>,
    pub(crate) ctx: Rc<Ctx>,
}

impl<'s> Env<'s> {
    /// This worker's index among all workers of all processes.
    pub fn index(&self) -> usize {
        self.scope.index()
    }

    /// Workers of all processes.
    pub fn peers(&self) -> usize {
        self.scope.peers()
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.ctx.job
    }

    /// A stream from a source (each worker reads its share).
    pub fn source<D>(&mut self, source: impl Into<Source<D>>) -> DataStream<'s, D>
    where
        D: timely::ExchangeData + Clone,
    {
        let source = source.into();
        let slot = self.ctx.checkpoints.slot("Source");
        let stream = source.build(self.scope, slot, &self.ctx.commits, self.ctx.stats.clone());
        let upstream = Upstream::own(self.scope.peers() as u32);
        DataStream::new(stream, upstream, self.ctx.clone())
    }
}
