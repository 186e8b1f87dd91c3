//! Which definitions a kept value may have outlived.
//!
//! The rustc wrapper numbers the cell crate's type definitions: the generation goes up when a
//! type, trait or module seen before is defined differently, and that changes every `TypeId`
//! of the crate (see `generation.rs`), so nothing can read an old value as a new
//! type through `Any`. A kept variable remembers its [`Epoch`]. When a later cell loads it from
//! another epoch, the store drops it if its type involves a definition that changed since
//! (directly, or through a type whose definition names one), and otherwise reads it under the
//! new `TypeId` (`take_retagged`): the definitions are the same text, so the layout is too.

use ra_ap_syntax::ast::{self, AstNode, HasModuleItem, HasName};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Where a value's `TypeId`s come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epoch {
    /// A fast-lane cell (its own crate, with definitions later handed to evcxr as they were).
    Lane,
    /// evcxr's cell crate at a generation.
    Ctx(u64),
}

/// The cell crate's named definitions, as the wrapper recorded them.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    generation: u64,
    types: BTreeMap<String, String>,
    changed: BTreeMap<u64, Vec<String>>,
}

impl Definitions {
    pub fn read(types_file: &Path) -> Definitions {
        let state: Value = std::fs::read_to_string(types_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        Definitions {
            generation: state["generation"].as_u64().unwrap_or(0),
            types: state["types"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect(),
            changed: state["changed"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.parse().ok()?, strings(v))))
                .collect(),
        }
    }

    #[cfg(test)]
    pub fn record_for_test(&mut self, name: &str, text: &str) {
        self.types.insert(name.to_owned(), text.to_owned());
    }

    pub fn now(&self) -> Epoch {
        Epoch::Ctx(self.generation)
    }

    /// The epoch a cell with these item sources compiles at, and the names it redefines.
    pub fn after(&self, items: &[String]) -> (Epoch, Vec<String>) {
        let redefined: Vec<String> = items
            .iter()
            .flat_map(|item| type_definitions(item))
            .filter(|(name, text)| self.types.get(name).is_some_and(|old| old != text))
            .map(|(name, _)| name)
            .collect();
        let epoch = if redefined.is_empty() {
            self.now()
        } else {
            Epoch::Ctx(self.generation + 1)
        };
        (epoch, redefined)
    }

    /// Names defined differently since `epoch` (plus `also`), with every definition that names
    /// one of them, transitively.
    pub fn changed_since(&self, epoch: Epoch, also: &[String]) -> BTreeSet<String> {
        let after = match epoch {
            Epoch::Lane => 0,
            Epoch::Ctx(g) => g,
        };
        let mut changed: BTreeSet<String> = self
            .changed
            .range(after + 1..)
            .flat_map(|(_, names)| names.iter().cloned())
            .chain(also.iter().cloned())
            .collect();
        loop {
            let more: Vec<String> = self
                .types
                .iter()
                .filter(|(name, text)| {
                    !changed.contains(*name) && changed.iter().any(|c| mentions(text, c))
                })
                .map(|(name, _)| name.clone())
                .collect();
            if more.is_empty() {
                return changed;
            }
            changed.extend(more);
        }
    }
}

/// Whether `text` names `name` as a whole word.
pub fn mentions(text: &str, name: &str) -> bool {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        !text[..at].ends_with(is_word) && !text[at + name.len()..].starts_with(is_word)
    })
}

/// The named type-like definitions (struct, enum, union, type alias, trait, module) of
/// `source`, with their text. The wrapper numbers generations from the same list.
pub fn type_definitions(source: &str) -> Vec<(String, String)> {
    let parsed = ra_ap_syntax::SourceFile::parse(source, ra_ap_syntax::Edition::Edition2024);
    parsed
        .tree()
        .items()
        .filter_map(|item| {
            let name = match &item {
                ast::Item::Struct(i) => i.name(),
                ast::Item::Enum(i) => i.name(),
                ast::Item::Union(i) => i.name(),
                ast::Item::TypeAlias(i) => i.name(),
                ast::Item::Trait(i) => i.name(),
                ast::Item::Module(i) => i.name(),
                _ => None,
            }?;
            Some((name.text().to_string(), item.syntax().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_reach_the_types_that_contain_them() {
        let defs = Definitions {
            generation: 2,
            types: [
                ("Foo", "struct Foo { a: String }"),
                ("Wrap", "struct Wrap(Foo);"),
                ("Bar", "struct Bar;"),
                ("FooBar", "struct FooBar;"),
            ]
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .into_iter()
            .collect(),
            changed: [(2, vec!["Foo".to_owned()])].into_iter().collect(),
        };
        let changed = defs.changed_since(Epoch::Ctx(1), &[]);
        assert_eq!(changed, ["Foo", "Wrap"].map(String::from).into());
        assert!(defs.changed_since(Epoch::Ctx(2), &[]).is_empty());
        assert_eq!(defs.changed_since(Epoch::Lane, &[]).len(), 2);
        assert!(mentions("std::vec::Vec<Foo>", "Foo"));
        assert!(!mentions("std::vec::Vec<FooBar>", "Foo"));
        let (epoch, redefined) = defs.after(&["struct Bar(u8);".to_owned()]);
        assert_eq!((epoch, redefined), (Epoch::Ctx(3), vec!["Bar".to_owned()]));
    }
}
