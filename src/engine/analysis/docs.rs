//! Doc text for the inspect tooltip as rustdoc shows it: in Rust code blocks, lines starting
//! with `# ` (and a lone `#`) are hidden and `##` shows as `#`. rust-analyzer's hover keeps
//! them, so `tokio::spawn` showed `# #[cfg(...)]`, `# {` and `# drop(socket);`.

/// Attributes rustdoc accepts on a Rust code block; a fence naming anything else (`text`,
/// `toml`, `sh`, ...) is not Rust and is left alone.
const RUST_ATTRIBUTES: &[&str] = &[
    "",
    "rust",
    "ignore",
    "should_panic",
    "no_run",
    "compile_fail",
    "edition2015",
    "edition2018",
    "edition2021",
    "edition2024",
    "standalone_crate",
    "test_harness",
    "allow_fail",
];

fn is_rust_fence(info: &str) -> bool {
    info.split([',', ' ', '\t'])
        .map(|a| a.trim().trim_start_matches('{').trim_end_matches('}'))
        .filter(|a| !a.is_empty() && !a.starts_with("ignore-") && !a.starts_with('E'))
        .all(|a| RUST_ATTRIBUTES.contains(&a))
}

/// A line of a Rust code block as rustdoc shows it: `None` when hidden.
fn shown(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if trimmed == "#" || trimmed.starts_with("# ") || trimmed.starts_with("#\t") {
        return None;
    }
    if trimmed.starts_with("##") {
        // `##` shows as `#`: drop the first `#` (and the indent before it, as rustdoc does).
        return Some(&trimmed[1..]);
    }
    Some(line)
}

/// rust-analyzer's plain text (the tooltip's text/plain) has lost the code fences, so the lines
/// to hide are the ones hidden from the Rust code blocks of the same docs' HTML.
pub fn hide_plain(plain: &str, html: &str) -> String {
    let mut hidden: Vec<String> = Vec::new();
    for_each_code_block(html, |language, code| {
        if is_rust_fence(language) {
            for line in code.lines() {
                if shown(line).is_none() {
                    hidden.push(unescape(line.trim()));
                }
            }
        }
    });
    let mut out = String::with_capacity(plain.len());
    for line in plain.split_inclusive('\n') {
        let trimmed = line.trim();
        if let Some(i) = hidden.iter().position(|h| h == trimmed) {
            hidden.swap_remove(i);
            continue;
        }
        out.push_str(line);
    }
    out
}

fn unescape(html: &str) -> String {
    html.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// Calls `f(language, code)` for each `<pre><code>` block of pulldown-cmark's HTML.
fn for_each_code_block(html: &str, mut f: impl FnMut(&str, &str)) {
    let mut rest = html;
    // 10: the length of `<pre><code`, after which the opening tag ends.
    while let Some(start) = rest.find("<pre><code") {
        let Some(open_end) = rest[start + 10..].find('>').map(|i| start + 10 + i + 1) else {
            return;
        };
        let Some(close) = rest[open_end..].find("</code></pre>").map(|i| open_end + i) else {
            return;
        };
        f(language_of(&rest[start..open_end]), &rest[open_end..close]);
        rest = &rest[close..];
    }
}

fn language_of(tag: &str) -> &str {
    tag.split("class=\"language-")
        .nth(1)
        .and_then(|l| l.split('"').next())
        .unwrap_or("")
}

/// HTML (the tooltip's text/html, rendered by pulldown-cmark): hides lines inside
/// `<pre><code>` blocks without a language or with a Rust one (`class="language-rust"`).
pub fn hide_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    // 10: the length of `<pre><code`, after which the opening tag ends.
    while let Some(start) = rest.find("<pre><code") {
        let Some(open_end) = rest[start + 10..].find('>').map(|i| start + 10 + i + 1) else {
            break;
        };
        let Some(close) = rest[open_end..].find("</code></pre>").map(|i| open_end + i) else {
            break;
        };
        let language = language_of(&rest[start..open_end]);
        out.push_str(&rest[..open_end]);
        let code = &rest[open_end..close];
        if is_rust_fence(language) {
            for line in code.split_inclusive('\n') {
                let body = line.trim_end_matches('\n');
                if let Some(kept) = shown(body) {
                    out.push_str(kept);
                    out.push_str(&line[body.len()..]);
                }
            }
        } else {
            out.push_str(code);
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_hides_what_the_html_hides() {
        let html = "<pre><code class=\"language-rust\"># #[cfg(x)]\nlet a = &quot;1&quot;;\n# drop(a);\n</code></pre><pre><code class=\"language-toml\"># kept\n</code></pre>";
        let plain = "Docs\n# #[cfg(x)]\nlet a = \"1\";\n# drop(a);\n# kept\n";
        assert_eq!(hide_plain(plain, html), "Docs\nlet a = \"1\";\n# kept\n");
    }

    #[test]
    fn html_hides_rustdoc_lines_in_rust_blocks_only() {
        let html = "<h1>x</h1><pre><code class=\"language-rust\"># #[cfg(x)]\n# {\nlet a = 1;\n# drop(a);\n# }\n</code></pre><pre><code class=\"language-text\"># kept\n</code></pre><pre><code># gone\nb\n</code></pre>";
        assert_eq!(
            hide_html(html),
            "<h1>x</h1><pre><code class=\"language-rust\">let a = 1;\n</code></pre><pre><code class=\"language-text\"># kept\n</code></pre><pre><code>b\n</code></pre>"
        );
    }
}
