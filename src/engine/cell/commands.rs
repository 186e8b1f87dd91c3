//! The command section of a cell: the leading lines evcxr reads as commands (`:dep`, `:opt`,
//! `!ls`, ...) and rustloop's own (`:tasks`, `:vars`), which it answers itself.

/// Commands rustloop answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnCommand {
    /// `:tasks`: list live tasks.
    Tasks,
    /// `:vars`: list the variables, with their types and cells.
    Vars,
}

/// Splits off evcxr's leading command section (`:cmd`, `!shell`, blank and `//` lines; commands
/// are only recognised before the first line of Rust, as in evcxr). rustloop's own commands are
/// replaced by spaces, so line numbers and offsets stay put.
pub(super) fn split_commands(cell: &str) -> (usize, Vec<OwnCommand>, String) {
    let mut own = Vec::new();
    let mut text = String::new();
    let mut offset = 0;
    for line in cell.split_inclusive('\n') {
        let trimmed = line.trim();
        let is_command = line.trim_start_matches(' ').starts_with(':') || line.starts_with('!');
        if is_command {
            let own_command = match trimmed {
                ":tasks" => Some(OwnCommand::Tasks),
                ":vars" => Some(OwnCommand::Vars),
                _ => None,
            };
            if let Some(command) = own_command {
                own.push(command);
                // Blanked to the same length: offsets in the code are offsets in the cell.
                let body = line.trim_end_matches('\n');
                text.push_str(&" ".repeat(body.len()));
                text.push_str(&line[body.len()..]);
            } else {
                text.push_str(line);
            }
        } else if trimmed.is_empty() || line.starts_with("//") {
            text.push_str(line);
        } else {
            break;
        }
        offset += line.len();
    }
    (offset, own, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_ends_at_the_first_line_of_rust_and_keeps_its_length() {
        let cell = ":dep itoa = \"1\"\n// note\n:vars\n\nlet x = 1;\n:tasks";
        let (end, own, text) = split_commands(cell);
        assert_eq!(&cell[end..], "let x = 1;\n:tasks");
        assert_eq!(own, vec![OwnCommand::Vars]);
        assert_eq!(text, ":dep itoa = \"1\"\n// note\n     \n\n");
        assert_eq!(text.len(), end);
    }
}
