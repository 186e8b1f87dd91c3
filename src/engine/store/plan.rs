//! The rewrite of one cell around the store ([`Variables::plan`]), and which keeps failed to
//! compile and why ([`Variables::keep_failures`]).

use super::epoch::{self, Definitions, Epoch};
use super::{KEEP_MARK, Ty, Variables};
use crate::engine::cell::{Part, Prepared};
use std::collections::BTreeMap;

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
    pub(super) skipped: BTreeMap<String, String>,
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
        // What the loads need, checked before any of them runs (they are outside the cell's
        // `catch_unwind`; see `loadable` in runtime/src/store/mod.rs).
        let mut checks = Vec::new();
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
                let (take, load) = match boxed {
                    true => ("take_boxed", "boxed"),
                    false => ("take", "own"),
                };
                checks.push(format!(
                    "(\"{name}\", rustloop::__store::Load::{load}::<{ty}>())"
                ));
                format!("rustloop::__store::{take}::<{ty}>(\"{name}\")")
            } else {
                let changed = definitions.changed_since(variable.epoch, &redefined);
                if let Some(what) = changed.iter().find(|c| epoch::mentions(ty, c)) {
                    dropped.push((name.clone(), variable.cell.clone(), what.clone()));
                    continue;
                }
                checks.push(format!(
                    "(\"{name}\", rustloop::__store::Load::retagged::<{ty}>({boxed}))"
                ));
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
        if !checks.is_empty() {
            load_lines.insert_str(
                0,
                &format!(
                    "if rustloop::__store::loadable(&[{}]) {{\n",
                    checks.join(", ")
                ),
            );
        }
        if !dropped.is_empty() {
            let names: Vec<String> = dropped.iter().map(|(n, _, _)| format!("{n:?}")).collect();
            load_lines.insert_str(
                0,
                &format!("rustloop::__store::forget(&[{}]);\n", names.join(", ")),
            );
        }
        // A value whose type can be written is never boxed, so it needs no kind dispatch
        // (which costs each cell about 3 ms of type checking).
        let keep = |name: &str| match outline.plain.contains(name) {
            true => {
                format!("rustloop::__store::keep(\"{name}\", {name}, None); {KEEP_MARK}{name}\n")
            }
            false => format!(
                "{{ let __rustloop_boxer = (&&&&&&&&rustloop::__store::Keep(&{name})).boxer(); \
                 rustloop::__store::keep(\"{name}\", {name}, __rustloop_boxer); }} \
                 {KEEP_MARK}{name}\n"
            ),
        };
        let mut body =
            String::from("{\n#[allow(unused_imports)] use rustloop::__store::kinds::*;\n");
        body.push_str(&load_lines);
        // A closure that captures no loaded variable can be called through `&mut dyn FnMut`,
        // and the runtime's `run` catches its panic (compiled once there); one that may move a
        // loaded variable is a `FnOnce`, caught here.
        let caught_here = !loads.is_empty();
        let returns = match outline.tries {
            true => "-> ::std::result::Result<(), rustloop::__store::CellError> ",
            false => "",
        };
        body.push_str(&if caught_here {
            format!(
                "let __rustloop_run = \
                 ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| {returns}{{\n"
            )
        } else {
            let run = if outline.tries { "run_fallible" } else { "run" };
            format!("rustloop::__store::{run}({lane}, &mut || {returns}{{\n")
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
                 // rustloop-probe own {name}\n"
            ));
            if !outline.plain.contains(name) {
                tail.push_str(&format!(
                    "#[cfg(rustloop_probe)] rustloop::__store::probe(\
                     &(&&&&&&&&rustloop::__store::Keep(&{name})).boxed_form()); \
                     // rustloop-probe boxed {name}\n"
                ));
            }
        }
        for name in &outline.bound {
            if !skip.contains_key(name) {
                tail.push_str(&keep(name));
            }
        }
        if outline.tries {
            tail.push_str("Ok(())\n");
        }
        tail.push_str(if caught_here { "}));\n" } else { "});\n" });
        for name in &loads {
            if skip.contains_key(name) {
                continue;
            }
            // Taken above as the same type: kept again with the boxer it had.
            let keep_loaded =
                format!("rustloop::__store::keep_loaded(\"{name}\", {name}); {KEEP_MARK}{name}\n");
            if outline.bound.contains(name) {
                // Rebound by the cell: the old value is kept only if the cell did not finish.
                tail.push_str(&format!("if __rustloop_run.is_err() {{ {keep_loaded}}}\n"));
            } else {
                tail.push_str(&keep_loaded);
            }
        }
        if caught_here {
            tail.push_str(if lane {
                // The fast lane's crate catches the panic again around the whole cell.
                "if let Err(p) = __rustloop_run { ::std::panic::resume_unwind(p) }\n"
            } else {
                // The only catch in evcxr's crate: evcxr compiles planned cells without its own
                // (`run.rs`), which saves each cell a second `catch_unwind` and a `println!`.
                "if let Err(p) = __rustloop_run { rustloop::__store::panicked(p) }\n"
            });
        }
        if !checks.is_empty() {
            tail.push_str("}\n");
        }
        tail.push_str("};\n");
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
    use super::super::Variable;
    use super::*;
    use crate::engine::cell::prepare;

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
        assert!(code.contains("keep_loaded(\"v\", v); // rustloop-keep v"));
        // The loads are checked before any is taken (they run outside the catch_unwind).
        let check = code
            .find("rustloop::__store::loadable(&[(\"v\", rustloop::__store::Load::own::<std::vec::Vec<i32>>())])")
            .expect("a load check");
        assert!(check < code.find("let mut v =").unwrap(), "{code}");
        // The cell's one catch_unwind ends by telling evcxr of a panic, not re-raising it.
        assert!(code.contains("rustloop::__store::panicked(p)"), "{code}");
        assert!(!code.contains("resume_unwind"), "{code}");
        assert_eq!(plan.bound, ["n"]);
        assert_eq!(plan.loads, ["v"]);
        assert!(
            !code.contains("let n = v.len();\n}"),
            "statements stay in the closure"
        );
    }

    #[test]
    fn a_cell_that_loads_nothing_is_caught_by_the_runtime() {
        let mut vars = Variables::default();
        let plan = |vars: &mut Variables, code: &str, lane: bool| {
            vars.plan(
                &prepare(code),
                &BTreeMap::new(),
                lane,
                &Definitions::default(),
            )
            .unwrap()
            .prepared
            .code
        };
        let code = plan(&mut vars, "let n = 5 + 1;", false);
        assert!(
            code.contains("rustloop::__store::run(false, &mut || {\nlet n = 5 + 1;"),
            "{code}"
        );
        // `5 + 1` has a type that can be written: kept without kind dispatch.
        assert!(code.contains("keep(\"n\", n, None);"), "{code}");
        assert!(!code.contains("catch_unwind") && !code.contains("__rustloop_run"));
        let code = plan(&mut vars, "let n: u8 = \"7\".parse()?;", true);
        assert!(
            code.contains(
                "rustloop::__store::run_fallible(true, &mut || \
                 -> ::std::result::Result<(), rustloop::__store::CellError> {"
            ),
            "{code}"
        );
        assert!(code.contains("Ok(())\n});"), "{code}");
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
        assert!(vars.table().contains("no    borrows s"), "{}", vars.table());
    }
}
