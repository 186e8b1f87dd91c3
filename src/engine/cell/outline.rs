//! The top level of a prepared cell as the variable store sees it (definitions, statements,
//! the names its `let`s bind and the names it mentions), and re-assembling a prepared cell from
//! pieces of itself and generated text without losing the map back to what the user typed.

use super::{Piece, Prepared, SourceMap, WRAP_PREFIX, at_top_level, is_brace_macro, parse_body};
use ra_ap_syntax::ast::{self, AstNode, HasName};
use ra_ap_syntax::{Edition, SourceFile, SyntaxKind, TextRange};
use std::collections::BTreeSet;
use std::ops::Range;

/// What a cell defines, does and uses, with byte ranges into [`Prepared::code`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outline {
    /// Items (`fn`, `struct`, `use`, item macros, ...), which stay at the crate's top level.
    pub items: Vec<Range<usize>>,
    /// Statements, in order.
    pub statements: Vec<Range<usize>>,
    /// Names bound by top-level `let`s, in order of their last binding.
    pub bound: Vec<String>,
    /// Those of [`Outline::bound`] whose last `let` shows that their type can be written: a
    /// written type (without `_` or `impl`), or a value made of literals (`5 + 1`, `-2.5`,
    /// `("a", 'b')`, `[0u8; 4]`). Their keep needs no kind dispatch: only futures, iterators
    /// and closures, whose types cannot be written, are ever boxed.
    pub plain: BTreeSet<String>,
    /// Every identifier the statements mention, including `{name}` in format strings.
    pub mentioned: BTreeSet<String>,
    /// A `?` at the top level (the cell returns early with an error).
    pub tries: bool,
}

/// A piece of a re-assembled cell: a range of [`Prepared::code`], or generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Code(Range<usize>),
    Text(String),
}

impl Prepared {
    /// The cell's top level; `None` if it does not parse (evcxr reports syntax errors best).
    pub fn outline(&self) -> Option<Outline> {
        let start = self.map.rust_start;
        let rust = &self.code[start..];
        let wrapped = format!("{WRAP_PREFIX}{rust}\n}}");
        if !SourceFile::parse(&wrapped, Edition::Edition2024)
            .errors()
            .is_empty()
        {
            return None;
        }
        let (_file, body) = parse_body(rust);
        let body = body?;
        let shift = WRAP_PREFIX.len();
        let range = |r: TextRange| {
            start + usize::from(r.start()) - shift..start + usize::from(r.end()) - shift
        };
        let mut outline = Outline::default();
        let statements = body
            .statements()
            .map(|s| s.syntax().clone())
            .chain(body.tail_expr().map(|e| e.syntax().clone()));
        for node in statements {
            let is_item = ast::Item::can_cast(node.kind())
                || ast::ExprStmt::cast(node.clone())
                    .and_then(|s| s.expr())
                    .is_some_and(|e| is_brace_macro(e.syntax()))
                || is_brace_macro(&node);
            if is_item {
                outline.items.push(range(node.text_range()));
                continue;
            }
            if let Some(stmt) = ast::LetStmt::cast(node.clone())
                && let Some(pat) = stmt.pat()
            {
                let plain = written_type(&stmt);
                for ident in pat.syntax().descendants().filter_map(ast::IdentPat::cast) {
                    let Some(name) = ident.name().map(|n| n.text().to_string()) else {
                        continue;
                    };
                    // `None`, `MAX`: constants and unit variants, not bindings.
                    if name.starts_with(|c: char| c.is_uppercase()) {
                        continue;
                    }
                    outline.bound.retain(|b| *b != name);
                    match plain {
                        true => outline.plain.insert(name.clone()),
                        false => outline.plain.remove(&name),
                    };
                    outline.bound.push(name);
                }
            }
            outline.tries |= node
                .descendants()
                .any(|n| ast::TryExpr::can_cast(n.kind()) && at_top_level(&n, body.syntax()));
            for token in node
                .descendants_with_tokens()
                .filter_map(|t| t.into_token())
            {
                match token.kind() {
                    SyntaxKind::IDENT => {
                        outline.mentioned.insert(token.text().to_owned());
                    }
                    SyntaxKind::STRING => format_captures(token.text(), &mut outline.mentioned),
                    _ => {}
                }
            }
            outline.statements.push(range(node.text_range()));
        }
        Some(outline)
    }

    /// A new prepared cell made of `parts` (after this cell's command lines), mapping back to
    /// the same original text.
    pub fn assemble(&self, parts: &[Part]) -> Prepared {
        let start = self.map.rust_start;
        let mut code = self.code[..start].to_owned();
        let mut pieces = Vec::new();
        for part in parts {
            match part {
                Part::Text(text) => {
                    code.push_str(text);
                    pieces.push(Piece::Generated(text.clone()));
                }
                Part::Code(range) => {
                    code.push_str(&self.code[range.clone()]);
                    pieces.extend(self.map.slice(range.start - start..range.end - start));
                }
            }
        }
        Prepared {
            code,
            own_commands: self.own_commands.clone(),
            map: SourceMap {
                rust_start: start,
                pieces,
            },
        }
    }

    /// Line numbers (1-based) in [`Prepared::code`] of generated lines that contain `marker`.
    pub fn lines_containing(&self, marker: &str) -> Vec<(usize, String)> {
        self.code
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(marker))
            .map(|(i, l)| (i + 1, l.to_owned()))
            .collect()
    }
}

impl SourceMap {
    /// The pieces that produce `range` of the rewritten Rust text.
    fn slice(&self, range: Range<usize>) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut pos = 0;
        for piece in &self.pieces {
            let len = match piece {
                Piece::Original(r) => r.len(),
                Piece::Generated(t) => t.len(),
            };
            let (from, to) = (range.start.max(pos), range.end.min(pos + len));
            if from < to {
                out.push(match piece {
                    Piece::Original(r) => Piece::Original(r.start + from - pos..r.start + to - pos),
                    Piece::Generated(t) => Piece::Generated(t[from - pos..to - pos].to_owned()),
                });
            }
            pos += len;
        }
        out
    }
}

/// Whether the types of all of `stmt`'s bindings can be written without looking: its type is
/// written out, or its value is made of literals.
fn written_type(stmt: &ast::LetStmt) -> bool {
    match stmt.ty() {
        Some(ty) => !ty
            .syntax()
            .descendants()
            .any(|n| ast::InferType::can_cast(n.kind()) || ast::ImplTraitType::can_cast(n.kind())),
        None => stmt.initializer().is_some_and(|e| literals_only(&e)),
    }
}

/// A value made only of literals, with operators, casts, tuples and arrays.
fn literals_only(expr: &ast::Expr) -> bool {
    let all = |mut exprs: ast::AstChildren<ast::Expr>| exprs.all(|e| literals_only(&e));
    let inner = |e: Option<ast::Expr>| e.is_some_and(|e| literals_only(&e));
    match expr {
        ast::Expr::Literal(_) => true,
        ast::Expr::ParenExpr(e) => inner(e.expr()),
        ast::Expr::PrefixExpr(e) => e.op_kind() != Some(ast::UnaryOp::Deref) && inner(e.expr()),
        ast::Expr::BinExpr(e) => {
            !matches!(e.op_kind(), None | Some(ast::BinaryOp::Assignment { .. }))
                && inner(e.lhs())
                && inner(e.rhs())
        }
        ast::Expr::CastExpr(e) => {
            inner(e.expr())
                && e.ty().is_some_and(|t| {
                    !t.syntax()
                        .descendants()
                        .any(|n| ast::InferType::can_cast(n.kind()))
                })
        }
        ast::Expr::TupleExpr(e) => all(e.fields()),
        ast::Expr::ArrayExpr(e) => all(e.exprs()),
        _ => false,
    }
}

/// Names captured by a format string (`"{x}"`, `"{x:?}"`, `"{x:>w$}"`).
fn format_captures(literal: &str, names: &mut BTreeSet<String>) {
    let mut rest = literal;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if rest.starts_with('{') {
            rest = &rest[1..];
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()) {
            names.insert(name.to_owned());
        }
        // A width or precision argument (`{:w$}`) names a variable too.
        if let Some(close) = rest.find('}') {
            for arg in rest[..close].split('$').rev().skip(1) {
                let arg = arg.trim_start_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
                if !arg.is_empty() {
                    names.insert(arg.to_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::prepare;
    use super::*;

    #[test]
    fn outline_splits_items_statements_and_bindings() {
        let prepared = prepare(
            "use std::time::Duration;\nlet (a, mut b) = (1, 2);\nfn f() -> u8 { 1 }\n\
             let Some(c) = Some(3) else { panic!() };\nprintln!(\"{a} {d:?}\");\nlet a = b;\na + c",
        );
        let outline = prepared.outline().unwrap();
        let text = |r: &Range<usize>| prepared.code[r.clone()].to_owned();
        assert_eq!(
            outline.items.iter().map(text).collect::<Vec<_>>(),
            ["use std::time::Duration;", "fn f() -> u8 { 1 }"]
        );
        assert_eq!(outline.bound, ["b", "c", "a"]);
        assert!(outline.mentioned.contains("d"), "{:?}", outline.mentioned);
        assert!(outline.mentioned.contains("a"));
        assert!(!outline.tries);
        assert_eq!(outline.statements.len(), 7, "{:?}", outline.statements);
    }

    #[test]
    fn assembled_cells_map_back_to_the_original() {
        let cell = "let x = 5;\nfn g() {}\nx + 1";
        let prepared = prepare(cell);
        let outline = prepared.outline().unwrap();
        let mut parts = vec![
            Part::Code(outline.items[0].clone()),
            Part::Text("\n{\n".into()),
        ];
        parts.extend(outline.statements.iter().map(|r| Part::Code(r.clone())));
        parts.push(Part::Text("}\n".into()));
        let assembled = prepared.assemble(&parts);
        assert!(
            assembled.code.starts_with("fn g() {}\n{\nlet x = 5;"),
            "{}",
            assembled.code
        );
        let at = assembled.code.find("let x").unwrap();
        assert_eq!(assembled.original_offset(at), 0);
        let g = assembled.code.find("fn g").unwrap();
        assert_eq!(assembled.original_offset(g), cell.find("fn g").unwrap());
    }

    #[test]
    fn lets_of_written_types_and_literals_are_plain() {
        let outline = prepare(
            "let a = 5 + 1;\nlet b: Vec<u8> = Vec::new();\nlet (c, d) = (\"x\", -2.5);\n\
             let e = [0u8; 4];\nlet f = 3 as u64;\nlet g = (0..3).map(|x| x);\nlet h = || 1;\n\
             let i: Vec<_> = vec![];\nlet j: impl Fn() = || ();\nlet k = x;\nlet a = k;",
        )
        .outline()
        .unwrap();
        let plain: Vec<&str> = outline.plain.iter().map(String::as_str).collect();
        assert_eq!(
            plain,
            ["b", "c", "d", "e", "f"],
            "`a` was bound again to a variable"
        );
    }

    #[test]
    fn top_level_question_marks_are_found() {
        let outline = prepare("let v: u8 = \"1\".parse()?;").outline().unwrap();
        assert!(outline.tries);
        let outline = prepare("let f = || -> Option<u8> { Some(1)? };")
            .outline()
            .unwrap();
        assert!(!outline.tries);
    }
}
