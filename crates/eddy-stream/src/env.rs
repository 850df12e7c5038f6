//! Running a job: `StreamEnv` holds how (workers, processes), `Env` is what the job's builder
//! closure gets on every worker to create sources.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use timely::dataflow::{ProbeHandle, Scope};
use timely::CommunicationConfig;

use crate::operators::{DataStream, Upstream};
use crate::source::Source;
use crate::StreamError;

/// How a job runs: worker threads per process, and processes (timely's `-w`, `-n`, `-p`,
/// `-h` arguments), plus the job's own arguments.
pub struct StreamEnv {
    config: timely::Config,
    args: Vec<String>,
}

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
        }
    }

    /// The arguments not taken by the engine (for the job itself).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Build the job on every worker with `build` and run it until every source is exhausted.
    pub fn execute<F>(self, name: &str, build: F) -> Result<(), StreamError>
    where
        F: Fn(&mut Env) + Send + Sync + 'static,
    {
        let name = name.to_owned();
        // the first worker panic, shared so the other workers stop instead of waiting forever
        // for a worker that is gone
        let failed: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let f = failed.clone();
        let guards = timely::execute(self.config, move |worker| {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let probe = ProbeHandle::new();
                worker.dataflow_named::<u64, _, _>(&name, |scope| {
                    let mut env = Env {
                        scope,
                        probe: probe.clone(),
                        sinks: Rc::new(RefCell::new(0)),
                    };
                    build(&mut env);
                });
                while f.lock().is_none() && worker.step_or_park(Some(Duration::from_millis(50))) {}
            }));
            if let Err(payload) = run {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "a worker panicked".to_owned());
                f.lock()
                    .get_or_insert(format!("worker {}: {msg}", worker.index()));
            }
        })
        .map_err(StreamError::Execution)?;
        for r in guards.join() {
            r.map_err(StreamError::Execution)?;
        }
        if let Some(msg) = failed.lock().take() {
            return Err(StreamError::Execution(msg));
        }
        Ok(())
    }
}

/// A worker's view while the job is built: it creates sources.
pub struct Env<'s> {
    pub(crate) scope: Scope<'s, u64>,
    pub(crate) probe: ProbeHandle<u64>,
    pub(crate) sinks: Rc<RefCell<usize>>,
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

    /// A stream from a source (each worker reads its share).
    pub fn source<D>(&mut self, source: Source<D>) -> DataStream<'s, D>
    where
        D: timely::ExchangeData + Clone,
    {
        let stream = source.build(self.scope);
        let upstream = Upstream::own(self.scope.peers() as u32);
        DataStream::new(stream, upstream, self.probe.clone(), self.sinks.clone())
    }
}
