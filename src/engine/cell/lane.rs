//! Which cells the fast lane can take while evcxr warms up, from the parser alone.

use super::{Prepared, WRAP_PREFIX, at_top_level, is_brace_macro, parse_body};
use ra_ap_syntax::ast::{self, AstNode};
use ra_ap_syntax::{Edition, SourceFile, SyntaxNode};

/// Whether the fast lane can run a cell without evcxr: no command line, no `static` or
/// item macro (state or definitions evcxr must own), no `?` or `return` at the top level
/// (evcxr's early-exit rules), no final value, and no syntax error (evcxr reports it best).
/// Its `let`s are fine: the variable store keeps them (see `store`).
pub fn fast_lane_eligible(prepared: &Prepared) -> bool {
    if !prepared.own_commands.is_empty() {
        return false;
    }
    let (commands, rust) = prepared.code.split_at(prepared.map.rust_start);
    if commands
        .lines()
        .any(|l| !l.trim().is_empty() && !l.starts_with("//"))
    {
        return false;
    }
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
        for cell in [
            ":dep rand\nrand::random::<u8>();",
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
