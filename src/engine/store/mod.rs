//! The variables a notebook keeps between cells, on the engine's side: which exist, the cell
//! that made each, and how a later cell spells its type. The values live in the evaluation
//! process (`rustloop::__store`, see runtime/src/store.rs).
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
//!     if let Err(p) = run { resume_unwind(p) }
//! };
//! ```
//! so evcxr sees no top-level `let` and never guesses a type. Loaded variables stay outside the
//! unwind boundary: a panic or an interrupt keeps them unless the cell moved them. A keep that
//! does not compile (a borrow of a local, a moved value) is dropped and the cell compiled again
//! ([`Variables::keep_failures`]); the cell then says which variables end with it.
//!
//! Types are spelled after the cell compiled, by rustc itself ([`probe`]), and only used when a
//! later cell loads the variable.

mod epoch;
mod probe;

pub use epoch::{Definitions, Epoch, type_definitions};
pub use probe::{ProbeJob, job_file, save_job};

use super::cell::{Part, Prepared};
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

/// A cell rewritten around the store.
#[derive(Debug, Clone)]
pub struct Plan {
    pub prepared: Prepared,
    /// Definitions, each as written (for the fast lane, which compiles its own crate).
    pub items: Vec<String>,
    /// The statements with the store code around them (likewise).
    pub body: String,
    /// Names this cell's top-level `let`s bind and keeps.
    pub bound: Vec<String>,
    /// Earlier variables it loads.
    pub loads: Vec<String>,
    /// Earlier variables it mentions whose type cannot be written.
    pub unusable: Vec<String>,
    /// Earlier variables dropped before it: (name, cell, the redefined type they involve).
    pub dropped: Vec<(String, String, String)>,
    /// Where the `TypeId`s of the values it keeps come from.
    pub epoch: Epoch,
    skipped: BTreeMap<String, String>,
}

impl Variables {
    /// Rewrites `prepared` around the store, for a crate compiled at `epoch` (the fast lane's,
    /// or evcxr's at the generation `definitions` say this cell gets). `skip` names keeps to
    /// leave out, with the reason (from [`keep_failures`](Self::keep_failures)). `None` when the
    /// cell does not parse or has no statements (definitions and commands need no store).
    pub fn plan(
        &mut self,
        prepared: &Prepared,
        skip: &BTreeMap<String, String>,
        lane: bool,
        definitions: &Definitions,
    ) -> Option<Plan> {
        let outline = prepared.outline().filter(|o| !o.statements.is_empty())?;
        // Wait only for the types of variables this cell may use.
        self.settle_for(|name| outline.mentioned.contains(name));
        let items: Vec<String> = outline
            .items
            .iter()
            .map(|r| prepared.code[r.clone()].to_owned())
            .collect();
        let (epoch, redefined) = match lane {
            true => (Epoch::Lane, Vec::new()),
            false => definitions.after(&items),
        };
        let mut loads = Vec::new();
        let mut unusable = Vec::new();
        let mut dropped = Vec::new();
        let mut load_lines = String::new();
        for name in outline.mentioned.iter() {
            let Some(variable) = self.kept.get(name) else {
                continue;
            };
            let (ty, boxed) = match &variable.ty {
                Ty::Own(ty) => (ty, false),
                Ty::Boxed(ty) => (ty, true),
                Ty::Pending | Ty::Unnamed(_) => {
                    unusable.push(name.clone());
                    continue;
                }
            };
            let call = if variable.epoch == epoch {
                let take = if boxed { "take_boxed" } else { "take" };
                format!("rustloop::__store::{take}::<{ty}>(\"{name}\")")
            } else {
                let changed = definitions.changed_since(variable.epoch, &redefined);
                if let Some(what) = changed.iter().find(|c| epoch::mentions(ty, c)) {
                    dropped.push((name.clone(), variable.cell.clone(), what.clone()));
                    continue;
                }
                // SAFETY (of the generated call): no definition the type involves changed.
                format!(
                    "unsafe {{ rustloop::__store::take_retagged::<{ty}>(\"{name}\", {boxed}) }}"
                )
            };
            load_lines.push_str(&format!(
                "#[allow(unused_mut, unused_variables)] let mut {name} = {call};\n"
            ));
            loads.push(name.clone());
        }
        if !dropped.is_empty() {
            let names: Vec<String> = dropped.iter().map(|(n, _, _)| format!("{n:?}")).collect();
            load_lines.insert_str(
                0,
                &format!("rustloop::__store::forget(&[{}]);\n", names.join(", ")),
            );
        }
        let keep = |name: &str| {
            format!(
                "{{ let __rustloop_boxer = (&&&&&&&&rustloop::__store::Keep(&{name})).boxer(); \
                 rustloop::__store::keep(\"{name}\", {name}, __rustloop_boxer); }} \
                 {KEEP_MARK}{name}\n"
            )
        };
        let mut body =
            String::from("{\n#[allow(unused_imports)] use rustloop::__store::kinds::*;\n");
        body.push_str(&load_lines);
        body.push_str(if outline.tries {
            "let __rustloop_run = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| \
             -> ::std::result::Result<(), rustloop::__store::CellError> {\n"
        } else {
            "let __rustloop_run = ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {\n"
        });
        let mut parts = vec![];
        for range in &outline.items {
            parts.push(Part::Code(range.clone()));
            parts.push(Part::Text("\n".into()));
        }
        let head = body.clone();
        parts.push(Part::Text(head));
        let mut statements = String::new();
        for range in &outline.statements {
            parts.push(Part::Code(range.clone()));
            parts.push(Part::Text("\n".into()));
            statements.push_str(&prepared.code[range.clone()]);
            statements.push('\n');
        }
        let mut tail = String::new();
        for name in &outline.bound {
            if skip.contains_key(name) {
                continue;
            }
            tail.push_str(&format!(
                "#[cfg(rustloop_probe)] rustloop::__store::probe(&{name}); \
                 // rustloop-probe own {name}\n\
                 #[cfg(rustloop_probe)] rustloop::__store::probe(\
                 &(&&&&&&&&rustloop::__store::Keep(&{name})).boxed_form()); \
                 // rustloop-probe boxed {name}\n"
            ));
        }
        for name in &outline.bound {
            if !skip.contains_key(name) {
                tail.push_str(&keep(name));
            }
        }
        if outline.tries {
            tail.push_str("Ok(())\n");
        }
        tail.push_str("}));\n");
        for name in &loads {
            if skip.contains_key(name) {
                continue;
            }
            if outline.bound.contains(name) {
                // Rebound by the cell: the old value is kept only if the cell did not finish.
                tail.push_str(&format!("if __rustloop_run.is_err() {}", keep(name)));
            } else {
                tail.push_str(&keep(name));
            }
        }
        tail.push_str("if let Err(p) = __rustloop_run { ::std::panic::resume_unwind(p) }\n};\n");
        parts.push(Part::Text(tail.clone()));
        body.push_str(&statements);
        body.push_str(&tail);
        Some(Plan {
            prepared: prepared.assemble(&parts),
            items,
            body,
            bound: outline
                .bound
                .iter()
                .filter(|n| !skip.contains_key(*n))
                .cloned()
                .collect(),
            loads,
            unusable,
            dropped,
            epoch,
            skipped: skip.clone(),
        })
    }

    /// A plan for a cell of definitions only (the fast lane compiles its own crate even then).
    pub fn definitions_only(prepared: &Prepared) -> Option<Plan> {
        let outline = prepared.outline().filter(|o| o.statements.is_empty())?;
        Some(Plan {
            prepared: prepared.clone(),
            items: outline
                .items
                .iter()
                .map(|r| prepared.code[r.clone()].to_owned())
                .collect(),
            body: String::new(),
            bound: Vec::new(),
            loads: Vec::new(),
            unusable: Vec::new(),
            dropped: Vec::new(),
            epoch: Epoch::Lane,
            skipped: BTreeMap::new(),
        })
    }

    /// Keeps that failed to compile, with why (`None` if no error touches a keep line: the
    /// errors are the user's). Moved values end silently; others are named to the user.
    pub fn keep_failures(
        plan: &Plan,
        errors: &[evcxr::CompilationError],
    ) -> Option<BTreeMap<String, String>> {
        let keep_lines: BTreeMap<usize, String> = plan
            .prepared
            .lines_containing(KEEP_MARK)
            .into_iter()
            .filter_map(|(n, line)| Some((n, line.rsplit(KEEP_MARK).next()?.trim().to_owned())))
            .collect();
        let touches = |error: &evcxr::CompilationError| -> Vec<String> {
            error
                .spanned_messages()
                .iter()
                .filter_map(|m| keep_lines.get(&m.span.as_ref()?.start_line).cloned())
                .collect()
        };
        // Moving a value out while another kept value borrows it (E0505) is a consequence:
        // once the borrower is not kept, the value can be. Drop borrowers first.
        let is_consequence = |e: &&evcxr::CompilationError| e.code() == Some("E0505");
        let causes: Vec<&evcxr::CompilationError> = errors
            .iter()
            .filter(|e| !is_consequence(e) && !touches(e).is_empty())
            .collect();
        let round: Vec<&evcxr::CompilationError> = if causes.is_empty() {
            errors.iter().collect()
        } else {
            causes
        };
        let mut failed = plan.skipped.clone();
        for error in round {
            for name in touches(error) {
                failed.entry(name).or_insert_with(|| why_not_kept(error));
            }
        }
        (failed.len() > plan.skipped.len()).then_some(failed)
    }

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
            "type".to_owned(),
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
                rows.push((
                    name.clone(),
                    "-".into(),
                    cell.clone(),
                    format!("no ({why})"),
                ));
            }
        }
        let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
        let w2 = rows.iter().map(|r| r.2.chars().count()).max().unwrap_or(0);
        let w3 = rows.iter().map(|r| r.3.chars().count()).max().unwrap_or(0);
        rows.iter()
            .map(|(n, t, c, k)| format!("{n:<w0$}  {c:<w2$}  {k:<w3$}  {t}\n"))
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

/// Why a keep did not compile, in a few words (empty: say nothing, the cell moved the value).
fn why_not_kept(error: &evcxr::CompilationError) -> String {
    let message = error.message();
    match error.code() {
        Some("E0382") => String::new(),
        Some("E0597") | Some("E0505") | Some("E0506") => message
            .split('`')
            .nth(1)
            .map(|s| format!("borrows {s}"))
            .unwrap_or_else(|| "borrows a value of this cell".to_owned()),
        Some("E0716") => "borrows a temporary value".to_owned(),
        Some("E0525") => "a closure that can be called only once".to_owned(),
        _ if message.contains("lifetime") || message.contains("borrow") => {
            "holds a borrow".to_owned()
        }
        _ => format!("cannot outlive the cell: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::cell::prepare;
    use super::*;

    #[test]
    fn lets_are_kept_and_mentioned_variables_loaded() {
        let mut vars = Variables::default();
        vars.kept.insert(
            "v".into(),
            Variable {
                cell: "[1]".into(),
                ty: Ty::Own("std::vec::Vec<i32>".into()),
                epoch: Epoch::Ctx(0),
            },
        );
        let plan = vars
            .plan(
                &prepare("fn f() {}\nlet n = v.len();\nn + 1"),
                &BTreeMap::new(),
                false,
                &Definitions::default(),
            )
            .unwrap();
        let code = &plan.prepared.code;
        assert!(code.starts_with("fn f() {}\n{"), "{code}");
        assert!(code.contains("let mut v = rustloop::__store::take::<std::vec::Vec<i32>>(\"v\")"));
        assert!(code.contains("keep(\"n\", n, __rustloop_boxer); } // rustloop-keep n"));
        assert!(code.contains("keep(\"v\", v, __rustloop_boxer); } // rustloop-keep v"));
        assert_eq!(plan.bound, ["n"]);
        assert_eq!(plan.loads, ["v"]);
        assert!(
            !code.contains("let n = v.len();\n}"),
            "statements stay in the closure"
        );
    }

    #[test]
    fn values_of_a_redefined_type_are_dropped_others_retagged() {
        let mut vars = Variables::default();
        for (name, ty) in [("p", "Point"), ("n", "u8")] {
            vars.kept.insert(
                name.into(),
                Variable {
                    cell: "[1]".into(),
                    ty: Ty::Own(ty.into()),
                    epoch: Epoch::Lane,
                },
            );
        }
        let mut definitions = Definitions::default();
        definitions.record_for_test("Point", "struct Point { x: i32 }");
        let plan = vars
            .plan(
                &prepare("struct Point { x: u8 }\nlet m = (p, n);"),
                &BTreeMap::new(),
                false,
                &definitions,
            )
            .unwrap();
        let code = &plan.prepared.code;
        assert!(
            code.contains("rustloop::__store::forget(&[\"p\"]);"),
            "{code}"
        );
        assert!(code.contains("take_retagged::<u8>(\"n\", false)"), "{code}");
        assert_eq!(
            vars.drop_stale(&plan).as_deref(),
            Some(
                "dropped because a type they involve was redefined: p (from cell [1], involves `Point`)\n"
            )
        );
        assert!(vars.get("p").is_none());
    }

    #[test]
    fn skipped_keeps_are_left_out() {
        let mut vars = Variables::default();
        let mut skip = BTreeMap::new();
        skip.insert("r".to_owned(), "borrows s".to_owned());
        let plan = vars
            .plan(
                &prepare("let s = String::new();\nlet r = &s;\nr.len()"),
                &skip,
                false,
                &Definitions::default(),
            )
            .unwrap();
        assert!(!plan.prepared.code.contains("keep(\"r\""));
        assert!(plan.prepared.code.contains("keep(\"s\""));
        assert_eq!(
            vars.record(&plan, "[2]", None, Epoch::Ctx(0)).as_deref(),
            Some("not kept after this cell: r (borrows s)\n")
        );
        assert!(vars.table().contains("no (borrows s)"));
    }
}
