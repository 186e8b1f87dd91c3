//! The order and the text of completions: names only, exact and prefix matches first.

/// What to insert for each completion, best first: the name alone (rust-analyzer's snippet
/// `sleep(duration)` inserts `sleep`, `sleep::` and `println!()` insert `sleep` and
/// `println!`), without duplicates; exact matches of what was typed, then prefix matches
/// (case-sensitive, then not), then the rest (rust-analyzer's fuzzy matches), each group in
/// alphabetical order with shorter names first.
pub fn rank(typed: &str, codes: impl Iterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for code in codes {
        let name = name_of(&code);
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    let lower = typed.to_lowercase();
    let group = |name: &str| {
        if name == typed {
            0
        } else if name.starts_with(typed) {
            1
        } else if name.to_lowercase().starts_with(&lower) {
            2
        } else {
            3
        }
    };
    names.sort_by_cached_key(|n| (group(n), n.len(), n.clone()));
    names
}

/// The name a completion's code starts with (an identifier, `r#` identifiers and a macro's `!`
/// included); code that does not start with one (postfix snippets, `&mut ...`) is kept whole.
fn name_of(code: &str) -> String {
    let ident_len = code
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_alphanumeric() || c == '_' || (i == 1 && c == '#' && code.starts_with('r')))
        })
        .map_or(code.len(), |(i, _)| i);
    if ident_len == 0 {
        return code.trim().to_owned();
    }
    let mut name = code[..ident_len].to_owned();
    if code[ident_len..].starts_with('!') {
        name.push('!');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_exact_and_prefix_matches_first() {
        // What rust-analyzer offered (in its order) for `tokio::time::sl`.
        let codes = [
            "sleep_until(deadline)",
            "Sleep",
            "Instant",
            "sleep::",
            "sleep(duration)",
        ];
        let ranked = rank("sl", codes.iter().map(|c| c.to_string()));
        assert_eq!(ranked, ["sleep", "sleep_until", "Sleep", "Instant"]);
        let ranked = rank("sleep", codes.iter().map(|c| c.to_string()));
        assert_eq!(ranked[..2], ["sleep", "sleep_until"]);
        assert_eq!(name_of("println!($0)"), "println!");
        assert_eq!(name_of("r#type"), "r#type");
    }
}
