//! Which cells the fast lane can take while evcxr warms up, from the parser alone.

use super::{Prepared, WRAP_PREFIX, at_top_level, is_brace_macro, parse_body};
use ra_ap_syntax::ast::{self, AstNode};
use ra_ap_syntax::{Edition, SourceFile, SyntaxNode};

/// Crates the runtime library is built from: a `:dep` on one of them may rebuild it, which only
/// evcxr's path handles (it restarts the evaluation process).
const RUNTIME_CRATES: &[&str] = &[
    "tokio",
    "tokio-macros",
    "rustloop-runtime",
    "mio",
    "bytes",
    "libc",
    "socket2",
    "parking_lot",
    "signal-hook-registry",
    "pin-project-lite",
];

/// The cell's `:dep` lines as Cargo.toml `name = spec` pairs (`:dep name` means any version);
/// `None` if it has another command, or a `:dep` the lane leaves to evcxr (a path or git
/// source, a crate the runtime is built from, anything that is not a plain `name = spec`).
pub fn lane_deps(prepared: &Prepared) -> Option<Vec<(String, String)>> {
    if !prepared.own_commands.is_empty() {
        return None;
    }
    let mut deps = Vec::new();
    for line in prepared.code[..prepared.map.rust_start].lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let spec = line.strip_prefix(":dep ")?.trim();
        let (name, value) = match spec.split_once('=') {
            Some((name, value)) => (name.trim(), value.trim().to_owned()),
            None => (spec, "\"*\"".to_owned()),
        };
        let plain_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !plain_name
            || value.is_empty()
            || value.contains("path")
            || value.contains("git")
            || RUNTIME_CRATES.contains(&name)
        {
            return None;
        }
        deps.push((name.to_owned(), value));
    }
    Some(deps)
}

/// Whether the fast lane can run a cell without evcxr: no command but `:dep` (see
/// [`lane_deps`]), no `static` or item macro (state or definitions evcxr must own), no `?` or
/// `return` at the top level (evcxr's early-exit rules), no final value, and no syntax error
/// (evcxr reports it best). Its `let`s are fine: the variable store keeps them (see `store`).
pub fn fast_lane_eligible(prepared: &Prepared) -> bool {
    if lane_deps(prepared).is_none() {
        return false;
    }
    let rust = &prepared.code[prepared.map.rust_start..];
    let wrapped = format!("{WRAP_PREFIX}{rust}\n}}");
    if !SourceFile::parse(&wrapped, Edition::Edition2024)
        .errors()
        .is_empty()
    {
        return false;
    }
    let (_file, Some(body)) = parse_body(rust) else {
        return false;
    };
    if body.tail_expr().is_some() {
        return false;
    }
    let exits_early = |node: &SyntaxNode| {
        node.descendants().any(|node| {
            (ast::TryExpr::can_cast(node.kind()) || ast::ReturnExpr::can_cast(node.kind()))
                && at_top_level(&node, body.syntax())
        })
    };
    body.statements().all(|statement| match statement {
        ast::Stmt::LetStmt(l) => !exits_early(l.syntax()),
        ast::Stmt::Item(item) => matches!(
            item,
            ast::Item::Fn(_)
                | ast::Item::Struct(_)
                | ast::Item::Enum(_)
                | ast::Item::Union(_)
                | ast::Item::Impl(_)
                | ast::Item::Trait(_)
                | ast::Item::TypeAlias(_)
                | ast::Item::Use(_)
                | ast::Item::Const(_)
                | ast::Item::Module(_)
                | ast::Item::MacroRules(_)
        ),
        ast::Stmt::ExprStmt(expr) => {
            !expr.expr().is_some_and(|e| is_brace_macro(e.syntax())) && !exits_early(expr.syntax())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::prepare;
    use super::*;

    #[test]
    fn fast_lane_takes_definitions_lets_and_statements() {
        assert!(fast_lane_eligible(&prepare(
            "use std::time::Duration;\n#[derive(Debug)]\nstruct P(u8);\nasync fn f() -> u8 { 1 }\n\
             let x = 1;\nprintln!(\"start\");\ntokio::time::sleep(Duration::from_millis(1)).await;\nf().await",
        )));
        // `?` and `return` inside functions and async blocks are fine.
        assert!(!fast_lane_eligible(&prepare(
            "fn g() -> Option<u8> { Some(1)? ; None }\nlet _ = 1?;"
        )));
        assert!(fast_lane_eligible(&prepare(
            "fn g() -> Option<u8> { Some(1)?; None }\nasync { Some(2)? ; Some(3) }.await;"
        )));
        assert!(fast_lane_eligible(&prepare(":dep itoa = \"1\"")));
        assert_eq!(
            lane_deps(&prepare(":dep itoa = \"1\"\n:dep serde\nlet x = 1;")),
            Some(vec![
                ("itoa".to_owned(), "\"1\"".to_owned()),
                ("serde".to_owned(), "\"*\"".to_owned())
            ])
        );
        for cell in [
            ":dep tokio = { version = \"1\", features = [\"test-util\"] }",
            ":dep mine = { path = \"../mine\" }",
            ":opt 2\n1;",
            ":tasks",
            ":vars",
            "static N: u8 = 1;",
            "thread_local! { static T: u8 = 1; }",
            "std::fs::read(\"x\")?;",
            "if true { return; }",
            "fn broken( {",
        ] {
            assert!(!fast_lane_eligible(&prepare(cell)), "{cell}");
        }
    }
}
