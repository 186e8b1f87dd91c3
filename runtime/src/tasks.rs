//! Task introspection: which tasks are alive on the notebook runtime and which cell run spawned
//! them. Uses tokio's task hooks (`--cfg tokio_unstable`, which rustloop passes when it builds
//! cells); without them the registry stays empty.

use crate::json;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// One live task.
#[derive(Clone)]
pub struct TaskInfo {
    /// tokio's task id.
    pub id: String,
    /// The notebook cell the task descends from, as the notebook shows it (e.g. `[5]`).
    pub cell: Option<String>,
    /// The cell run (as numbered by the evaluation process) the task descends from.
    pub run: u64,
    /// Where `spawn` was called, in the source rustloop generated for the cell.
    pub spawned_at: String,
    /// Seconds since the task was spawned.
    pub age_secs: f64,
    started: Instant,
}

impl std::fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskInfo")
            .field("id", &self.id)
            .field("cell", &self.cell)
            .field("age_secs", &self.age_secs)
            .finish()
    }
}

static LABELS: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);

/// Records how the notebook labels a run (sent by the kernel when the run starts).
pub(crate) fn set_label(run: u64, label: String) {
    LABELS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(run, label);
}

impl TaskInfo {
    pub(crate) fn to_json(&self) -> String {
        json::object([
            ("id", json::string(&self.id)),
            ("run", self.run.to_string()),
            ("spawned_at", json::string(&self.spawned_at)),
            ("age_secs", format!("{:.3}", self.age_secs)),
        ])
    }
}

static REGISTRY: Mutex<Option<HashMap<String, TaskInfo>>> = Mutex::new(None);

/// Tasks inside a poll right now. tokio wakes a task's `JoinHandle` during the task's last
/// poll and runs the terminate hook (which takes it off the list) only after that, still
/// inside the poll; [`live`] waits for polls in flight so an awaited task is never listed.
static IN_POLL: AtomicUsize = AtomicUsize::new(0);

/// The longest [`live`] waits for polls in flight (a task busy without yielding stays listed).
const POLL_SETTLE: Duration = Duration::from_millis(100);

#[cfg(tokio_unstable)]
pub(crate) fn install_hooks(builder: &mut tokio::runtime::Builder) {
    builder
        .on_task_spawn(|meta| {
            // A task spawned by another task inherits that task's cell; one spawned by the
            // evaluation thread belongs to the cell running now.
            let run = origin_of_current().unwrap_or_else(crate::current_run);
            let location = meta.spawned_at();
            let info = TaskInfo {
                id: meta.id().to_string(),
                cell: None,
                run,
                spawned_at: format!("{}:{}", location.file(), location.line()),
                age_secs: 0.0,
                started: Instant::now(),
            };
            REGISTRY
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .insert(info.id.clone(), info);
        })
        .on_task_terminate(|meta| {
            if let Some(map) = REGISTRY.lock().unwrap().as_mut() {
                map.remove(&meta.id().to_string());
            }
        })
        .on_before_task_poll(|meta| {
            IN_POLL.fetch_add(1, Ordering::SeqCst);
            if let Some(run) = run_of(&meta.id().to_string()) {
                crate::origin::begin(run);
            }
        })
        .on_after_task_poll(|_| {
            crate::origin::end();
            IN_POLL.fetch_sub(1, Ordering::SeqCst);
        });
}

#[cfg(not(tokio_unstable))]
pub(crate) fn install_hooks(_builder: &mut tokio::runtime::Builder) {}

/// The cell run of the task currently being polled on this thread, if any.
pub(crate) fn origin_of_current() -> Option<u64> {
    run_of(&tokio::task::try_id()?.to_string())
}

fn run_of(id: &str) -> Option<u64> {
    REGISTRY.lock().unwrap().as_ref()?.get(id).map(|t| t.run)
}

pub(crate) fn live() -> Vec<TaskInfo> {
    let deadline = Instant::now() + POLL_SETTLE;
    // Called from a task, that task's own poll is in flight.
    let own = tokio::task::try_id().is_some() as usize;
    while IN_POLL.load(Ordering::SeqCst) > own && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut tasks: Vec<TaskInfo> = REGISTRY
        .lock()
        .unwrap()
        .as_ref()
        .map(|map| map.values().cloned().collect())
        .unwrap_or_default();
    let labels = LABELS.lock().unwrap();
    for task in &mut tasks {
        task.age_secs = task.started.elapsed().as_secs_f64();
        task.cell = labels.as_ref().and_then(|l| l.get(&task.run).cloned());
    }
    tasks.sort_by_key(|t| t.started);
    tasks
}
