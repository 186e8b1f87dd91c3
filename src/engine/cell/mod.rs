//! What a cell's source becomes before evcxr sees it, and what rustloop reads from source
//! without compiling it.
//!
//! - `.await` outside async code becomes `rustloop::__await(...)`, a wait on the shared runtime
//!   that an interrupt can cancel. Macro calls that need an async context (`select!`, `join!`,
//!   `try_join!`, or any macro whose tokens contain `.await`) are wrapped in
//!   `rustloop::__await(async { ... })`.
//! - The final expression is shown through the runtime's result hooks: an inherent
//!   `evcxr_display`, then [`rustloop::Rich`], then `Debug` (one compile, no fallback retry).
//! - Leading `:`-commands are left to evcxr, except rustloop's own (`:tasks`), which are taken
//!   out and reported separately.
//!
//! The rewrite is recorded as pieces of original and generated text, so compiler positions can
//! be mapped back to what the user typed.

mod commands;
mod complete;
mod lane;
mod outline;

pub use commands::OwnCommand;
pub use complete::{Completeness, is_complete};
pub use lane::{fast_lane_eligible, lane_deps};
pub use outline::Part;

use commands::split_commands;
use ra_ap_syntax::ast::{self, AstNode, HasModuleItem};
use ra_ap_syntax::{Edition, SourceFile, SyntaxKind, SyntaxNode, TextRange};

/// A cell ready for evcxr.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Full text for evcxr: command lines, then the rewritten Rust.
    pub code: String,
    /// Commands rustloop handles itself, in order.
    pub own_commands: Vec<OwnCommand>,
    map: SourceMap,
}

/// Pieces of the rewritten text: copies of original ranges and generated text.
#[derive(Debug, Clone, Default)]
struct SourceMap {
    /// Byte offset in the original where the Rust part starts (== in the output).
    rust_start: usize,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone)]
enum Piece {
    Original(std::ops::Range<usize>),
    Generated(String),
}

impl Prepared {
    /// Maps a byte offset in `code` back to a byte offset in the original cell.
    pub fn original_offset(&self, offset: usize) -> usize {
        let map = &self.map;
        if offset < map.rust_start {
            return offset;
        }
        let mut out_pos = map.rust_start;
        let mut last_original_end = map.rust_start;
        for piece in &map.pieces {
            match piece {
                Piece::Original(range) => {
                    let len = range.len();
                    if offset < out_pos + len {
                        return map.rust_start + range.start + (offset - out_pos);
                    }
                    out_pos += len;
                    last_original_end = map.rust_start + range.end;
                }
                Piece::Generated(text) => {
                    if offset < out_pos + text.len() {
                        return last_original_end;
                    }
                    out_pos += text.len();
                }
            }
        }
        last_original_end + (offset - out_pos)
    }
}

/// Prepares a cell for evcxr.
pub fn prepare(cell: &str) -> Prepared {
    let (commands_end, own_commands, command_text) = split_commands(cell);
    let rust = &cell[commands_end..];
    let (pieces, _) = rewrite(rust);
    let mut code = command_text;
    for piece in &pieces {
        match piece {
            Piece::Original(range) => code.push_str(&rust[range.clone()]),
            Piece::Generated(text) => code.push_str(text),
        }
    }
    Prepared {
        code,
        own_commands,
        map: SourceMap {
            rust_start: commands_end,
            pieces,
        },
    }
}

const WRAP_PREFIX: &str = "fn __rustloop_cell() {\n";

/// Parses Rust cell code as the body of a function.
fn parse_body(rust: &str) -> (SourceFile, Option<ast::StmtList>) {
    let wrapped = format!("{WRAP_PREFIX}{rust}\n}}");
    let file = SourceFile::parse(&wrapped, Edition::Edition2024).tree();
    let body = file.items().find_map(|item| match item {
        ast::Item::Fn(f) => f.body().and_then(|b| b.stmt_list()),
        _ => None,
    });
    (file, body)
}

fn rewrite(rust: &str) -> (Vec<Piece>, bool) {
    let whole = vec![Piece::Original(0..rust.len())];
    if rust.trim().is_empty() {
        return (whole, false);
    }
    let (_file, Some(body)) = parse_body(rust) else {
        return (whole, false);
    };
    let shift = WRAP_PREFIX.len();
    let to_rust = |range: TextRange| -> std::ops::Range<usize> {
        let start = usize::from(range.start())
            .saturating_sub(shift)
            .min(rust.len());
        let end = usize::from(range.end())
            .saturating_sub(shift)
            .min(rust.len());
        start..end
    };

    let targets: Vec<SyntaxNode> = body
        .syntax()
        .descendants()
        .filter(|node| is_target(node) && at_top_level(node, body.syntax()))
        .collect();
    let tail = body.tail_expr().filter(|tail| !is_item_like(tail.syntax()));

    let mut pieces = Vec::new();
    let mut cursor = 0usize;
    let push_original = |pieces: &mut Vec<Piece>, range: std::ops::Range<usize>| {
        if !range.is_empty() {
            pieces.push(Piece::Original(range));
        }
    };

    // Outermost edits, in source order: the tail (which renders targets inside it), and
    // targets outside the tail.
    let tail_range = tail.as_ref().map(|t| to_rust(t.syntax().text_range()));
    let mut edits: Vec<(std::ops::Range<usize>, Vec<Piece>)> = Vec::new();
    for target in outermost(&targets) {
        let range = to_rust(target.text_range());
        if let Some(t) = &tail_range
            && t.start <= range.start
            && range.end <= t.end
        {
            continue;
        }
        edits.push((range, render_target(&target, &targets, &to_rust)));
    }
    if let (Some(tail), Some(range)) = (&tail, &tail_range) {
        let mut rendered = vec![Piece::Generated(
            "rustloop::__result_begin(); { use rustloop::__private::{RichResult as _, \
             DebugResult as _}; (&("
                .to_owned(),
        )];
        rendered.extend(render_inner(tail.syntax(), &targets, &to_rust));
        rendered.push(Piece::Generated(
            ")).evcxr_display(); } rustloop::__result_end();".to_owned(),
        ));
        edits.push((range.clone(), rendered));
    }
    edits.sort_by_key(|(range, _)| range.start);
    for (range, rendered) in edits {
        push_original(&mut pieces, cursor..range.start);
        pieces.extend(rendered);
        cursor = range.end;
    }
    push_original(&mut pieces, cursor..rust.len());
    (pieces, tail.is_some())
}

/// Nodes that need the runtime: `.await`, and macro calls that need an async context.
fn is_target(node: &SyntaxNode) -> bool {
    if ast::AwaitExpr::can_cast(node.kind()) {
        return true;
    }
    let Some(call) = ast::MacroCall::cast(node.clone()) else {
        return false;
    };
    let name = call
        .path()
        .and_then(|p| p.segment())
        .and_then(|s| s.name_ref())
        .map(|n| n.text().to_string())
        .unwrap_or_default();
    if matches!(name.as_str(), "select" | "join" | "try_join") {
        return true;
    }
    call.token_tree().is_some_and(|tt| {
        tt.syntax()
            .descendants_with_tokens()
            .any(|t| t.kind() == SyntaxKind::AWAIT_KW)
    })
}

/// True unless something between `node` and the cell body gives it its own context: an async
/// block, a closure, or an item (fn, impl, const, ...).
fn at_top_level(node: &SyntaxNode, body: &SyntaxNode) -> bool {
    for ancestor in node.ancestors().skip(1) {
        if &ancestor == body {
            return true;
        }
        if let Some(block) = ast::BlockExpr::cast(ancestor.clone())
            && block.async_token().is_some()
        {
            return false;
        }
        if ast::ClosureExpr::can_cast(ancestor.kind()) || ast::Item::can_cast(ancestor.kind()) {
            return false;
        }
        if ast::MacroCall::can_cast(ancestor.kind()) {
            // A target inside a macro call's tokens is handled by wrapping the call.
            return false;
        }
    }
    false
}

/// Items, and brace-delimited macro calls (`thread_local! { ... }`), which conventionally
/// define things rather than produce a value to show (`select! { ... }` does produce one).
fn is_item_like(node: &SyntaxNode) -> bool {
    let macro_call = ast::MacroExpr::cast(node.clone())
        .and_then(|m| m.macro_call())
        .map(|c| c.syntax().clone());
    ast::Item::can_cast(node.kind())
        || (is_brace_macro(node) && !macro_call.is_some_and(|call| is_target(&call)))
}

fn is_brace_macro(node: &SyntaxNode) -> bool {
    let call = ast::MacroExpr::cast(node.clone())
        .and_then(|m| m.macro_call())
        .or_else(|| ast::MacroCall::cast(node.clone()));
    call.and_then(|c| c.token_tree())
        .and_then(|tt| tt.l_curly_token())
        .is_some()
}

fn outermost(targets: &[SyntaxNode]) -> Vec<SyntaxNode> {
    targets
        .iter()
        .filter(|t| {
            !targets
                .iter()
                .any(|other| other != *t && other.text_range().contains_range(t.text_range()))
        })
        .cloned()
        .collect()
}

fn render_target(
    node: &SyntaxNode,
    targets: &[SyntaxNode],
    to_rust: &dyn Fn(TextRange) -> std::ops::Range<usize>,
) -> Vec<Piece> {
    if let Some(await_expr) = ast::AwaitExpr::cast(node.clone()) {
        let mut out = vec![Piece::Generated("rustloop::__await(".to_owned())];
        if let Some(inner) = await_expr.expr() {
            out.extend(render_inner(inner.syntax(), targets, to_rust));
        }
        out.push(Piece::Generated(")".to_owned()));
        return out;
    }
    // A macro call: run it inside an async block. A brace-delimited macro used as a statement
    // (`tokio::select! { ... }`) had no `;`; the call that replaces it needs one.
    let needs_semicolon = node
        .ancestors()
        .skip(1)
        .take(2)
        .find_map(ast::ExprStmt::cast)
        .is_some_and(|stmt| stmt.semicolon_token().is_none());
    let mut out = vec![Piece::Generated("rustloop::__await(async { ".to_owned())];
    out.push(Piece::Original(to_rust(node.text_range())));
    out.push(Piece::Generated(
        if needs_semicolon { " });" } else { " })" }.to_owned(),
    ));
    out
}

/// The text of `node` with the targets inside it rendered.
fn render_inner(
    node: &SyntaxNode,
    targets: &[SyntaxNode],
    to_rust: &dyn Fn(TextRange) -> std::ops::Range<usize>,
) -> Vec<Piece> {
    let range = to_rust(node.text_range());
    let inside: Vec<SyntaxNode> = targets
        .iter()
        .filter(|t| {
            *t != node
                && node.text_range().contains_range(t.text_range())
                && t.text_range() != node.text_range()
        })
        .cloned()
        .collect();
    let mut out = Vec::new();
    let mut cursor = range.start;
    for target in outermost(&inside) {
        let r = to_rust(target.text_range());
        if r.start > cursor {
            out.push(Piece::Original(cursor..r.start));
        }
        out.extend(render_target(&target, targets, to_rust));
        cursor = r.end;
    }
    // A target spanning the whole node (e.g. the tail *is* an await) is rendered here.
    if let Some(same) = targets.iter().find(|t| t.text_range() == node.text_range()) {
        return render_target(same, targets, to_rust);
    }
    if cursor < range.end {
        out.push(Piece::Original(cursor..range.end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(cell: &str) -> String {
        prepare(cell).code
    }

    #[test]
    fn top_level_await_is_rewritten() {
        assert_eq!(
            code("let x = sleep(d).await;"),
            "let x = rustloop::__await(sleep(d));"
        );
    }

    #[test]
    fn nested_and_question_mark() {
        assert_eq!(
            code("let b = get(u).await?.text().await?;"),
            "let b = rustloop::__await(rustloop::__await(get(u))?.text())?;"
        );
    }

    #[test]
    fn await_inside_async_blocks_closures_and_fns_is_untouched() {
        let cell = "let h = tokio::spawn(async move { sleep(d).await; 1 });\n\
                    async fn f() { g().await }\n\
                    let c = async || x.await;";
        assert_eq!(code(cell), cell);
    }

    #[test]
    fn await_in_loops_at_top_level() {
        assert_eq!(
            code("for i in 0..3 { tick(i).await; }"),
            "rustloop::__result_begin(); { use rustloop::__private::{RichResult as _, \
             DebugResult as _}; (&(for i in 0..3 { rustloop::__await(tick(i)); })).evcxr_display(); } \
             rustloop::__result_end();"
        );
    }

    #[test]
    fn select_and_join_macros_get_an_async_context() {
        let out = code("tokio::select! { _ = a => {}, _ = b => {} }\nlet y = 2;");
        assert_eq!(
            out,
            "rustloop::__await(async { tokio::select! { _ = a => {}, _ = b => {} } });\nlet y = 2;"
        );
        let out = code("let (a, b) = tokio::join!(f(), g());");
        assert_eq!(
            out,
            "let (a, b) = rustloop::__await(async { tokio::join!(f(), g()) });"
        );
        let out = code("println!(\"{}\", f().await);");
        assert_eq!(
            out,
            "rustloop::__await(async { println!(\"{}\", f().await) });"
        );
    }

    #[test]
    fn final_expression_is_shown_and_mapped_back() {
        let p = prepare("let x = 1;\nx + 1");
        assert!(p.code.contains("(&(x + 1)).evcxr_display()"));
        // `x + 1` starts at offset 11 in the original; find it in the output.
        let at = p.code.find("x + 1").unwrap();
        assert_eq!(p.original_offset(at), 11);
        assert_eq!(p.original_offset(at + 4), 15);
        // Generated text maps to the end of the preceding original text.
        assert_eq!(p.original_offset(p.code.len() - 1), 16);
    }

    #[test]
    fn commands_are_kept_and_tasks_taken_out() {
        let p = prepare(":dep rand = \"0.8\"\n:tasks\n\nlet x = 1;");
        assert_eq!(p.own_commands, vec![OwnCommand::Tasks]);
        assert_eq!(p.code, ":dep rand = \"0.8\"\n      \n\nlet x = 1;");
        let only = prepare(":tasks");
        assert_eq!(only.code.trim(), "");
        assert_eq!(only.own_commands, vec![OwnCommand::Tasks]);
    }

    #[test]
    fn own_commands_keep_offsets_so_the_rust_part_is_found() {
        // `:vars` last, after a `:dep`: the outline once sliced past the end of the code.
        let p = prepare(":dep axum = \"0.8\"\n:vars");
        assert_eq!(p.own_commands, vec![OwnCommand::Vars]);
        assert!(p.outline().is_none_or(|o| o.statements.is_empty()));
        let p = prepare(":vars\nlet x = 1;\nx + 1");
        assert_eq!(p.outline().unwrap().bound, vec!["x".to_owned()]);
        let at = p.code.find("x + 1").unwrap();
        assert_eq!(p.original_offset(at), 17);
    }

    #[test]
    fn statements_and_items_only_have_no_result() {
        for cell in ["let x = 1;", "fn f() -> u8 { 1 }", "struct S;"] {
            assert_eq!(code(cell), cell);
        }
    }

    #[test]
    fn completeness() {
        assert_eq!(is_complete("let x = 1;"), Completeness::Complete);
        assert_eq!(is_complete("x + 1"), Completeness::Complete);
        assert_eq!(is_complete(":dep tokio"), Completeness::Complete);
        assert_eq!(
            is_complete("fn f() {"),
            Completeness::Incomplete("    ".into())
        );
        assert_eq!(
            is_complete("let v = vec![1,"),
            Completeness::Incomplete("    ".into())
        );
        assert_eq!(
            is_complete("let s = \"abc"),
            Completeness::Incomplete("    ".into())
        );
        assert_eq!(
            is_complete("let x = 1 +"),
            Completeness::Incomplete(String::new())
        );
        assert_eq!(is_complete("let x = 1;)"), Completeness::Invalid);
        assert_eq!(is_complete("fn f() }"), Completeness::Invalid);
        assert_eq!(is_complete("let 1x = ;;"), Completeness::Invalid);
        assert_eq!(is_complete("let c = '{';"), Completeness::Complete);
        assert_eq!(
            is_complete("fn f<'a>(x: &'a str) {}"),
            Completeness::Complete
        );
        assert_eq!(is_complete("let r = r#\"}\"#;"), Completeness::Complete);
    }
}
