//! The solver: runs the vertices a build needs, in parallel where the graph allows.
//!
//! It knows vertices, cache keys and scheduling; what an op does lives in [`crate::ops`].
//! - A vertex runs once all its inputs are done; at most [`Parallelism::busy`] run at once.
//!   With [`Parallelism::lend_idle`] (the default when no `--max-parallelism` was given) the
//!   bound is on *busy* vertices, as `GOMAXPROCS` bounds the threads running Go code rather
//!   than those blocked in a system call: a RUN step whose cgroup used less than
//!   [`IDLE_SHARE`] of one CPU over the last [`SAMPLE_EVERY`] (sleeping, waiting on the
//!   network or a pipe) lends its slot to the next ready vertex, up to [`LEND_FACTOR`] times
//!   the bound in all. A step that cannot be measured counts as busy.
//! - Identical vertices were merged when the graph was built (same definition digest), so each
//!   runs once.
//! - Cache key = sha256(tenant, definition digest, input cache keys, content digest of what
//!   the op reads from a client context). An `ADD <url>` download stands in with its pinned
//!   checksum and file name instead of its definition digest ([`crate::ops::cache_identity`]). A hit in the committed metadata or earlier in this build
//!   skips the op.
//! - The first error cancels the rest: no new vertex starts, running tasks are aborted and
//!   running sandboxed steps are killed; the error names the failing vertex.
//! - Results are staged, not committed: the caller commits them when the whole build succeeds.
//! - A step that read the client's files is checked after it ran (the files digested again,
//!   the build failing if they changed meanwhile). The check runs on while the solve goes on
//!   and the caller exports the layers; the caller waits for it ([`Solved::verify`]) before
//!   anything of the build is committed or leaves the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::Digest;
use crate::graph::{Graph, VertexIdx};
use crate::ops::{OpContext, OpError, Output};
use crate::progress::Event;

/// Solver errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SolveError {
    /// A vertex failed.
    #[error("{name}: {error}")]
    Vertex {
        /// Index of the failing vertex.
        vertex: VertexIdx,
        /// Its description.
        name: String,
        /// What went wrong (shown in the message, so not also a `source`).
        error: OpError,
    },
    /// A task panicked or was lost.
    #[error("internal error while solving: {0}")]
    Internal(String),
}

/// The outcome of solving: every needed vertex's result and cache key.
#[derive(Debug, Default)]
#[must_use = "a solve's checks must be waited for (`Solved::verify`) before its results are used"]
pub struct Solved {
    /// Results by vertex.
    pub outputs: HashMap<VertexIdx, Output>,
    /// How many vertices were cache hits.
    pub cached: usize,
    /// How many ran.
    pub executed: usize,
    /// Cache keys by vertex (what `--cache-to` exports).
    pub keys: HashMap<VertexIdx, Digest>,
    /// The checks of steps that read the client's files, still running ([`Solved::verify`]).
    checks: Vec<PendingCheck>,
}

/// A step's check after it ran: the vertex, its name, and the task digesting again the
/// client's files it read.
#[derive(Debug)]
struct PendingCheck {
    vertex: VertexIdx,
    name: String,
    task: tokio::task::JoinHandle<Result<(), OpError>>,
}

impl Drop for PendingCheck {
    /// A check nobody waits for (the build failed or was cancelled first) is stopped.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Solved {
    /// Waits for the checks of the steps that read the client's files: each digests those
    /// files again and fails if they changed after they were digested for the step's cache key
    /// (the step may then have read other bytes than the key says, so its result belongs to no
    /// key). Nothing of the build may be committed, or leave the store, before this succeeds.
    pub async fn verify(&mut self) -> Result<(), SolveError> {
        for mut check in std::mem::take(&mut self.checks) {
            let result = (&mut check.task)
                .await
                .map_err(|e| SolveError::Internal(format!("step check failed: {e}")))?;
            if let Err(error) = result {
                return Err(SolveError::Vertex {
                    vertex: check.vertex,
                    name: std::mem::take(&mut check.name),
                    error,
                });
            }
        }
        Ok(())
    }
}

/// How many vertices may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// At most this many busy vertices (at least 1).
    pub busy: usize,
    /// Whether an idle RUN step lends its slot (see the module docs); without it, `busy`
    /// bounds every running vertex, idle or not.
    pub lend_idle: bool,
}

/// How often the running steps' CPU time is sampled while a ready vertex waits for a slot.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(25);
/// A step that used less than this share of one CPU since its last sample is idle.
pub const IDLE_SHARE: f64 = 0.1;
/// With lending, at most this many times [`Parallelism::busy`] vertices run at once.
pub const LEND_FACTOR: usize = 4;

/// Which running steps are idle, from samples of their cgroups' CPU time.
#[derive(Debug, Default)]
struct IdleSteps {
    /// The last sample of each step seen: when, and its CPU time then.
    last: HashMap<VertexIdx, (Instant, Duration)>,
    /// The steps idle over their last sampling window.
    idle: std::collections::HashSet<VertexIdx>,
}

impl IdleSteps {
    /// Takes a sample of every running step (`None`: not measurable, counted busy). A step
    /// is idle when it used less than [`IDLE_SHARE`] of the time since its previous sample,
    /// which must be at least half of [`SAMPLE_EVERY`] (a shorter window keeps the verdict
    /// of the previous one). A step's first sample only sets its baseline: it is busy.
    fn sample(&mut self, now: Instant, samples: &[(VertexIdx, Option<Duration>)]) {
        let seen: std::collections::HashSet<VertexIdx> = samples.iter().map(|s| s.0).collect();
        self.last.retain(|v, _| seen.contains(v));
        self.idle.retain(|v| seen.contains(v));
        for &(v, cpu) in samples {
            let Some(cpu) = cpu else {
                self.last.remove(&v);
                self.idle.remove(&v);
                continue;
            };
            match self.last.get(&v).copied() {
                Some((then, used)) => {
                    let window = now.saturating_duration_since(then);
                    if window < SAMPLE_EVERY / 2 {
                        continue;
                    }
                    let busy = cpu.saturating_sub(used).as_secs_f64();
                    if busy < window.as_secs_f64() * IDLE_SHARE {
                        self.idle.insert(v);
                    } else {
                        self.idle.remove(&v);
                    }
                }
                None => {
                    self.idle.remove(&v);
                }
            }
            self.last.insert(v, (now, cpu));
        }
    }

    /// A vertex finished: forget it.
    fn done(&mut self, v: VertexIdx) {
        self.last.remove(&v);
        self.idle.remove(&v);
    }

    /// How many running steps are idle now.
    fn count(&self) -> usize {
        self.idle.len()
    }
}

/// Solves `targets` and everything they depend on.
pub async fn solve(
    graph: Arc<Graph>,
    targets: &[VertexIdx],
    ctx: Arc<OpContext>,
    parallelism: Parallelism,
) -> Result<Solved, SolveError> {
    let needed = graph.ancestors(targets);
    let limit = parallelism.busy.max(1);
    let cap = if parallelism.lend_idle {
        limit.saturating_mul(LEND_FACTOR)
    } else {
        limit
    };
    let mut idle = IdleSteps::default();
    let mut remaining: HashMap<VertexIdx, usize> = HashMap::new();
    let mut dependents: HashMap<VertexIdx, Vec<VertexIdx>> = HashMap::new();
    let mut ready: Vec<VertexIdx> = Vec::new();
    for &i in &needed {
        let Some(v) = graph.get(i) else { continue };
        let mut uniq = v.inputs.clone();
        uniq.sort_unstable();
        uniq.dedup();
        remaining.insert(i, uniq.len());
        for inp in uniq {
            dependents.entry(inp).or_default().push(i);
        }
        if v.inputs.is_empty() {
            ready.push(i);
        }
    }
    // Start in graph order so progress numbering reads naturally.
    ready.sort_unstable_by(|a, b| b.cmp(a));

    let keys: Arc<Mutex<HashMap<VertexIdx, Digest>>> = Arc::default();
    let mut solved = Solved::default();
    let mut tasks: JoinSet<(VertexIdx, StepResult)> = JoinSet::new();
    let mut running = 0usize;

    loop {
        while running < cap && running - idle.count().min(running) < limit {
            let Some(i) = ready.pop() else { break };
            let Some(v) = graph.get(i) else { continue };
            let inputs: Vec<Output> = v
                .inputs
                .iter()
                .filter_map(|x| solved.outputs.get(x).cloned())
                .collect();
            let input_keys: Vec<Digest> = {
                let k = keys
                    .lock()
                    .map_err(|e| SolveError::Internal(e.to_string()))?;
                v.inputs.iter().filter_map(|x| k.get(x).copied()).collect()
            };
            if inputs.len() != v.inputs.len() || input_keys.len() != v.inputs.len() {
                return Err(SolveError::Internal(format!(
                    "vertex {i} scheduled before its inputs"
                )));
            }
            let g = graph.clone();
            let c = ctx.clone();
            running += 1;
            tasks.spawn(async move {
                let r = run_one(&g, i, inputs, input_keys, &c).await;
                (i, r)
            });
        }
        // A ready vertex waits only for the busy bound: sample the running steps until one
        // finishes or enough of them are idle.
        let lend = parallelism.lend_idle && running < cap && !ready.is_empty();
        let joined = if lend {
            tokio::select! {
                j = tasks.join_next() => j,
                () = tokio::time::sleep(SAMPLE_EVERY) => {
                    idle.sample(Instant::now(), &ctx.step_cpu_times());
                    continue;
                }
            }
        } else {
            tasks.join_next().await
        };
        let Some(joined) = joined else {
            break;
        };
        running -= 1;
        let (i, result) = match joined {
            Ok(x) => x,
            Err(e) => {
                cancel(&mut tasks, &ctx).await;
                return Err(SolveError::Internal(format!("step task failed: {e}")));
            }
        };
        idle.done(i);
        let name = graph.get(i).map(|v| v.name.clone()).unwrap_or_default();
        match result {
            Ok((out, key, outcome, check)) => {
                if let Some(task) = check {
                    solved.checks.push(PendingCheck {
                        vertex: i,
                        name: name.clone(),
                        task,
                    });
                }
                match outcome {
                    Outcome::Cached => solved.cached += 1,
                    Outcome::Executed => solved.executed += 1,
                    Outcome::Trivial => {}
                }
                keys.lock()
                    .map_err(|e| SolveError::Internal(e.to_string()))?
                    .insert(i, key);
                solved.keys.insert(i, key);
                solved.outputs.insert(i, out);
                for &d in dependents.get(&i).map(Vec::as_slice).unwrap_or(&[]) {
                    if let Some(n) = remaining.get_mut(&d) {
                        *n -= 1;
                        if *n == 0 {
                            ready.push(d);
                        }
                    }
                }
                ready.sort_unstable_by(|a, b| b.cmp(a));
            }
            Err(error) => {
                ctx.progress.send(Event::Error {
                    vertex: i,
                    message: error.to_string(),
                });
                cancel(&mut tasks, &ctx).await;
                return Err(SolveError::Vertex {
                    vertex: i,
                    name,
                    error,
                });
            }
        }
    }
    if solved.outputs.len() != needed.len() {
        return Err(SolveError::Internal("not every vertex was solved".into()));
    }
    Ok(solved)
}

/// Stops everything still running after a failure.
async fn cancel<T: 'static>(tasks: &mut JoinSet<T>, ctx: &OpContext) {
    ctx.cancel();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Computes a vertex's cache key, looks it up, and runs the op on a miss.
async fn run_one(
    graph: &Arc<Graph>,
    i: VertexIdx,
    inputs: Vec<Output>,
    input_keys: Vec<Digest>,
    ctx: &Arc<OpContext>,
) -> StepResult {
    let v = graph
        .get(i)
        .ok_or_else(|| OpError::Internal(format!("no vertex {i}")))?;
    let content = crate::ops::content_digest(ctx, &v.op, &inputs, false).await?;
    let mut enc = Vec::with_capacity(64 * (2 + input_keys.len()));
    enc.extend_from_slice(b"kiln.cachekey.v1\0");
    enc.extend_from_slice(ctx.tenant.as_str().as_bytes());
    enc.push(0);
    let identity = crate::ops::cache_identity(&v.op).unwrap_or(v.digest);
    enc.extend_from_slice(identity.as_bytes());
    for k in &input_keys {
        enc.extend_from_slice(k.as_bytes());
    }
    if let Some(c) = content {
        enc.extend_from_slice(c.as_bytes());
    }
    // A step that mounts secrets: their ids and keyed MACs of their values (never a value).
    if let Some(s) = ctx.secret_cache_input(&v.op)? {
        enc.extend_from_slice(&s);
    }
    // A required ssh agent that was not given fails the step before its cache lookup (the
    // agent itself is not part of the key, as in BuildKit).
    ctx.check_ssh(&v.op)?;
    let key = Digest::of(&enc);
    let announce = crate::ops::announces(&v.op);
    if let Some(out) = crate::ops::cached(ctx, &v.op, &key, &inputs)? {
        if announce {
            ctx.progress.send(Event::Cached {
                vertex: i,
                name: v.name.clone(),
            });
        }
        let outcome = if announce {
            Outcome::Cached
        } else {
            Outcome::Trivial
        };
        return Ok((out, key, outcome, None));
    }
    let start = Instant::now();
    if announce {
        ctx.progress.send(Event::Started {
            vertex: i,
            name: v.name.clone(),
        });
    }
    let recheck = content.is_some().then(|| inputs.clone());
    let out = crate::ops::run(ctx, i, &v.op, inputs, &key).await?;
    // The op read the client's files after they were hashed for the key. If they changed in
    // between, the result does not belong to that key: the build fails rather than cache it.
    // Checked beside what follows (the caller waits for it: `Solved::verify`).
    let check = recheck.map(|inputs| {
        let (graph, ctx) = (graph.clone(), ctx.clone());
        tokio::spawn(async move {
            let v = graph
                .get(i)
                .ok_or_else(|| OpError::Internal(format!("no vertex {i}")))?;
            if crate::ops::content_digest(&ctx, &v.op, &inputs, true).await? != content {
                return Err(OpError::ContextChanged);
            }
            Ok(())
        })
    });
    if announce {
        ctx.progress.send(Event::Done {
            vertex: i,
            duration: start.elapsed(),
        });
    }
    Ok((out, key, Outcome::Executed, check))
}

/// A finished vertex: its output, cache key, how it was satisfied, and its check still
/// running (see [`Solved::verify`]).
type StepResult = Result<
    (
        Output,
        Digest,
        Outcome,
        Option<tokio::task::JoinHandle<Result<(), OpError>>>,
    ),
    OpError,
>;

/// How a vertex was satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// From the cache.
    Cached,
    /// By running its op.
    Executed,
    /// Nothing to run (scratch, a context reference, a merge of done inputs).
    Trivial,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_step_is_idle_only_after_a_whole_window_of_little_cpu() {
        let t0 = Instant::now();
        let mut s = IdleSteps::default();
        // First sight: a baseline, busy whatever it used before.
        s.sample(t0, &[(1, Some(40 * MS)), (2, Some(Duration::ZERO))]);
        assert_eq!(s.count(), 0);
        // 25 ms later: step 1 used 1 ms (4 %), step 2 used 20 ms (80 %).
        s.sample(t0 + 25 * MS, &[(1, Some(41 * MS)), (2, Some(20 * MS))]);
        assert!(s.idle.contains(&1) && !s.idle.contains(&2));
        // A window under half the period keeps the last verdict, even with a burst in it.
        s.sample(t0 + 30 * MS, &[(1, Some(45 * MS)), (2, Some(20 * MS))]);
        assert!(s.idle.contains(&1) && !s.idle.contains(&2));
        // Step 1 wakes up (busy again), step 2 goes to sleep.
        s.sample(t0 + 55 * MS, &[(1, Some(60 * MS)), (2, Some(21 * MS))]);
        assert!(!s.idle.contains(&1) && s.idle.contains(&2));
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn an_unmeasurable_or_finished_step_is_not_idle() {
        let t0 = Instant::now();
        let mut s = IdleSteps::default();
        s.sample(t0, &[(1, Some(Duration::ZERO)), (2, Some(Duration::ZERO))]);
        s.sample(
            t0 + 25 * MS,
            &[(1, Some(Duration::ZERO)), (2, Some(Duration::ZERO))],
        );
        assert_eq!(s.count(), 2);
        // Step 1's cgroup can no longer be read: busy, and its baseline is dropped.
        s.sample(t0 + 50 * MS, &[(1, None), (2, Some(Duration::ZERO))]);
        assert!(!s.idle.contains(&1) && s.idle.contains(&2));
        s.sample(
            t0 + 75 * MS,
            &[(1, Some(Duration::ZERO)), (2, Some(Duration::ZERO))],
        );
        assert!(!s.idle.contains(&1), "a new baseline is not a window");
        // Step 2 is gone from the running list: forgotten.
        s.sample(t0 + 100 * MS, &[(1, Some(Duration::ZERO))]);
        assert!(s.idle.contains(&1) && !s.idle.contains(&2));
        s.done(1);
        assert_eq!(s.count(), 0);
    }

    #[test]
    fn a_clock_or_counter_going_backwards_is_not_a_panic() {
        let t0 = Instant::now();
        let mut s = IdleSteps::default();
        s.sample(t0 + 100 * MS, &[(1, Some(50 * MS))]);
        // Earlier time, smaller counter (a recycled vertex id): a window too short to judge.
        s.sample(t0, &[(1, Some(10 * MS))]);
        assert_eq!(s.count(), 0);
    }
}
