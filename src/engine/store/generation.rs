//! The generation of the cell crate's type definitions: the part of its `-C metadata` that
//! rustloop owns, recorded by the cell build (`wrapper.rs`) in the slot's types file, which
//! `epoch.rs` reads.

use std::path::Path;

/// Where the wrapper remembers the cell crate's type definitions (next to the warnings file).
pub fn types_file(warnings_file: &Path) -> std::path::PathBuf {
    warnings_file.with_file_name(".rustloop-types.json")
}

/// A generation number for the cell crate's type definitions, added to its `-C metadata`.
/// Builds that compiled with different definitions never share a generation (and so never
/// share `TypeId`s); a build that failed stored no values and is forgotten.
///
/// evcxr builds every cell as crate `ctx` with the same metadata, so `ctx::Foo` has the same
/// `TypeId` in every cell even after `struct Foo` is redefined with different fields, and a
/// value kept under the old definition would be read as the new one (memory corruption in
/// safe code). The generation goes up when a type, trait or module already seen is defined
/// differently; then every `TypeId` of the crate changes, and the store (`epoch.rs`) decides
/// which kept values outlived their definitions. New definitions and other cells leave it
/// alone, so values carry over as before.
pub struct TypeGeneration {
    pub generation: u64,
    state: serde_json::Value,
    file: std::path::PathBuf,
}

impl TypeGeneration {
    pub fn new(source: &str, file: std::path::PathBuf) -> TypeGeneration {
        let mut state: serde_json::Value = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .filter(|s: &serde_json::Value| s["types"].is_object())
            .unwrap_or_else(|| serde_json::json!({"generation": 0, "types": {}}));
        let mut generation = state["generation"].as_u64().unwrap_or(0);
        let mut changed = Vec::new();
        for (name, text) in super::type_definitions(source) {
            let known = &mut state["types"][&name];
            if known.as_str().is_some_and(|old| old != text) {
                changed.push(name);
            }
            *known = serde_json::Value::String(text);
        }
        if !changed.is_empty() {
            generation += 1;
            state["generation"] = generation.into();
            // Which definitions changed, for the variable store (see `store::epoch`).
            state["changed"][generation.to_string()] = changed.into();
        }
        TypeGeneration {
            generation,
            state,
            file,
        }
    }

    /// Remembers these definitions as the current ones.
    pub fn commit(&self) {
        let _ = std::fs::write(&self.file, self.state.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_generation_moves_only_when_a_known_type_is_redefined() {
        let dir = std::env::temp_dir().join(format!("rustloop-types-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("types.json");
        let build = |types: &str, compiled: bool| {
            let source = format!("{types}\nfn f() -> u8 {{ 1 }}\nfn run() {{ let x = 1; }}");
            let generation = TypeGeneration::new(&source, state.clone());
            if compiled {
                generation.commit();
            }
            generation.generation
        };
        assert_eq!(build("struct Foo { a: u64 }", true), 0);
        // other code, and a new type: same identity, kept values stay readable
        assert_eq!(build("struct Foo { a: u64 }", true), 0);
        assert_eq!(build("struct Foo { a: u64 }\nenum Bar { A }", true), 0);
        // a redefinition that does not compile changes nothing for later builds
        assert_eq!(build("struct Foo { a: Strin }\nenum Bar { A }", false), 1);
        assert_eq!(build("struct Foo { a: u64 }\nenum Bar { A }", true), 0);
        // a redefinition that compiles: a new identity, once
        assert_eq!(build("struct Foo { a: String }\nenum Bar { A }", true), 1);
        assert_eq!(build("struct Foo { a: String }\nenum Bar { A }", true), 1);
        // going back is a change too: generations never repeat
        assert_eq!(build("struct Foo { a: u64 }\nenum Bar { A }", true), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
