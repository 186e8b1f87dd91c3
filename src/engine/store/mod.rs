//! The variables a notebook keeps between cells, on the engine's side: which exist, the cell
//! that made each, and how a later cell spells its type. The values live in the evaluation
//! process (`rustloop::__store`, see runtime/src/store/).
//!
//! Every cell is rewritten around its statements ([`Variables::plan`]):
//! ```text
//! <the cell's items, at the crate's top level>
//! {
//!     let mut x: T = take::<T>("x");                  // earlier variables this cell mentions
//!     let run = catch_unwind(|| {
//!         <the cell's statements>
//!         #[cfg(rustloop_probe)] let _: () = y;        // for the type probe
//!         keep("y", y, boxer_of(&y));                   // this cell's top-level `let`s
//!     });
//!     keep("x", x, ..);                                 // unless the cell moved it
//!     if let Err(p) = run { panicked(p) }               // tells evcxr (fast lane: resume_unwind)
//! };
//! ```
//! A cell that loads nothing hands its statements to the runtime instead,
//! `rustloop::__store::run(lane, &mut || { .. })`, which catches the panic in code compiled
//! once (the closure captures nothing, so it is a `FnMut`).
//! so evcxr sees no top-level `let` and never guesses a type, and needs no `catch_unwind` of
//! its own around the cell. Loaded variables stay outside the
//! unwind boundary: a panic or an interrupt keeps them unless the cell moved them. A keep that
//! does not compile (a borrow of a local, a moved value) is dropped and the cell compiled again
//! ([`Variables::keep_failures`]); the cell then says which variables end with it.
//!
//! Types are spelled after the cell compiled, by rustc itself ([`probe`]), and only used when a
//! later cell loads the variable.

mod epoch;
mod generation;
mod plan;
mod probe;

pub use epoch::{Definitions, Epoch, type_definitions};
pub use generation::{TypeGeneration, types_file};
pub use plan::Plan;
pub use probe::{ProbeJob, clear_jobs, drop_job, save_job};

use std::collections::BTreeMap;
use std::sync::mpsc;

/// Marks the generated line that keeps a variable.
const KEEP_MARK: &str = "// rustloop-keep ";

/// How a later cell can write a kept variable's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ty {
    /// rustc has not spelled it yet (its probe is running).
    Pending,
    /// Its own type.
    Own(String),
    /// A trait object it is turned into on first use (futures, iterators, closures).
    Boxed(String),
    /// Neither can be written; what rustc printed.
    Unnamed(String),
}

#[derive(Debug, Clone)]
pub struct Variable {
    /// The label of the cell that made it, e.g. `[3]`.
    pub cell: String,
    pub ty: Ty,
    /// Where its `TypeId`s come from.
    pub epoch: Epoch,
}

/// The engine's record of the kept variables.
#[derive(Default)]
pub struct Variables {
    kept: BTreeMap<String, Variable>,
    /// Variables of recent cells that ended with their cell, and why.
    ended: BTreeMap<String, (String, String)>,
    /// Running type probes, with the names each spells.
    probes: Vec<(Vec<String>, probe::Found)>,
}

impl Variables {
    /// Before a cell runs: forgets the variables its plan drops (the cell's first line drops
    /// their values); the line that names them.
    pub fn drop_stale(&mut self, plan: &Plan) -> Option<String> {
        let named: Vec<String> = plan
            .dropped
            .iter()
            .map(|(name, cell, ty)| {
                self.kept.remove(name);
                self.ended.insert(
                    name.clone(),
                    (
                        cell.clone(),
                        format!("dropped: its type involves `{ty}`, which was redefined"),
                    ),
                );
                format!("{name} (from cell {cell}, involves `{ty}`)")
            })
            .collect();
        (!named.is_empty()).then(|| {
            format!(
                "dropped because a type they involve was redefined: {}\n",
                named.join(", ")
            )
        })
    }

    /// After a cell ran to the end: its variables are kept (types follow from `probe`), and
    /// the line to show about those that ended with it. `epoch`: where the `TypeId`s of its
    /// values come from (the generation the wrapper gave the build).
    pub fn record(
        &mut self,
        plan: &Plan,
        label: &str,
        probe: Option<ProbeJob>,
        epoch: Epoch,
    ) -> Option<String> {
        for name in plan.skipped.keys() {
            self.kept.remove(name);
        }
        for name in &plan.loads {
            if let Some(v) = self.kept.get_mut(name) {
                // Put back by this cell, so under this cell's `TypeId`s.
                v.epoch = epoch;
            }
        }
        for (names, _) in &mut self.probes {
            // An earlier probe's answer is about the earlier value.
            names.retain(|n| !plan.bound.contains(n));
        }
        for name in &plan.bound {
            self.ended.remove(name);
            self.kept.insert(
                name.clone(),
                Variable {
                    cell: label.to_owned(),
                    ty: Ty::Pending,
                    epoch,
                },
            );
        }
        if !plan.bound.is_empty() {
            match probe {
                Some(job) => {
                    let names = plan.bound.clone();
                    self.probes.push((names.clone(), job.start(names)));
                }
                None => {
                    for name in &plan.bound {
                        self.kept.get_mut(name).expect("just inserted").ty =
                            Ty::Unnamed("rustc's type probe did not run".into());
                    }
                }
            }
        }
        let named: Vec<String> = plan
            .skipped
            .iter()
            .filter(|(_, why)| !why.is_empty())
            .map(|(name, why)| {
                self.ended
                    .insert(name.clone(), (label.to_owned(), why.clone()));
                format!("{name} ({why})")
            })
            .collect();
        (!named.is_empty()).then(|| format!("not kept after this cell: {}\n", named.join(", ")))
    }

    /// After a cell that did not finish (panic, interrupt, `?`): what it loaded and did not
    /// move is still kept; what it bound is not.
    pub fn record_unfinished(&mut self, plan: &Plan) {
        for name in plan.skipped.keys() {
            if plan.loads.contains(name) {
                self.kept.remove(name);
            }
        }
    }

    /// Forgets a variable (its value was dropped in the evaluation process).
    pub fn forget(&mut self, name: &str) {
        self.kept.remove(name);
    }

    /// Forgets everything (the evaluation process was restarted); the names that were kept.
    pub fn clear(&mut self) -> Vec<String> {
        self.settle();
        self.ended.clear();
        std::mem::take(&mut self.kept).into_keys().collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.kept.keys().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Option<&Variable> {
        self.kept.get(name)
    }

    /// A variable that is no longer kept: the cell that made it, and why it is gone.
    pub fn ended(&self, name: &str) -> Option<&(String, String)> {
        self.ended.get(name)
    }

    /// Names of variables that are no longer kept.
    pub fn ended_names(&self) -> Vec<String> {
        self.ended.keys().cloned().collect()
    }

    /// `:vars`: each variable with its type, the cell that made it, and whether it is kept.
    pub fn table(&mut self) -> String {
        self.settle();
        if self.kept.is_empty() && self.ended.is_empty() {
            return "No variables.\n".to_owned();
        }
        let mut rows = vec![(
            "name".to_owned(),
            "type (or why it is not kept)".to_owned(),
            "cell".to_owned(),
            "kept".to_owned(),
        )];
        for (name, v) in &self.kept {
            let ty = match &v.ty {
                Ty::Own(t) => t.clone(),
                Ty::Boxed(t) => format!("{t} (boxed)"),
                Ty::Pending => "(being worked out)".to_owned(),
                Ty::Unnamed(t) => format!("{t} (cannot be written; not usable in later cells)"),
            };
            rows.push((name.clone(), ty, v.cell.clone(), "yes".to_owned()));
        }
        for (name, (cell, why)) in &self.ended {
            if !self.kept.contains_key(name) {
                rows.push((name.clone(), why.clone(), cell.clone(), "no".to_owned()));
            }
        }
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w2 = rows.iter().map(|r| r.2.chars().count()).max().unwrap_or(0);
        rows.iter()
            .map(|(n, t, c, k)| format!("{n:<w0$}  {c:<w2$}  {k:<4}  {t}\n"))
            .collect()
    }

    /// Waits for running probes and records the types they found.
    fn settle(&mut self) {
        self.settle_for(|_| true);
    }

    /// Waits for the running probes that spell a name `wanted` accepts (and for those that
    /// have finished anyway), and records the types they found.
    fn settle_for(&mut self, wanted: impl Fn(&str) -> bool) {
        let mut running = Vec::new();
        for (names, probe) in std::mem::take(&mut self.probes) {
            let found = if names.iter().any(|n| wanted(n)) {
                probe.recv().unwrap_or_default()
            } else {
                match probe.try_recv() {
                    Ok(found) => found,
                    Err(mpsc::TryRecvError::Disconnected) => BTreeMap::new(),
                    Err(mpsc::TryRecvError::Empty) => {
                        running.push((names, probe));
                        continue;
                    }
                }
            };
            for name in &names {
                if let Some(v) = self.kept.get_mut(name)
                    && v.ty == Ty::Pending
                {
                    v.ty = found
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| Ty::Unnamed("rustc's type probe found nothing".into()));
                }
            }
        }
        self.probes = running;
    }
}
