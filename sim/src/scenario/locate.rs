//! Positions in the scenario text: line and column of an offset, the table an offset is
//! in, and the key of a value, so that every error names its line and field.

use std::ops::Range;

/// 1-based line and column of byte `offset`.
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = src.get(..offset.min(src.len())).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The table holding byte `offset`: `host`, `destination 1`, `vm 2`, `vm 2, device 1`,
/// `step 7`.
pub(super) fn context_at(src: &str, offset: usize) -> Option<String> {
    // Up to the end of the offset's line, so that a header line names its own table.
    let end = src
        .get(offset.min(src.len())..)
        .and_then(|rest| rest.find('\n'))
        .map_or(src.len(), |i| offset + i);
    let before = src.get(..end).unwrap_or(src);
    let (mut vms, mut devices, mut steps, mut destinations) = (0usize, 0usize, 0usize, 0usize);
    let mut current = None;
    for line in before.lines() {
        match line.trim() {
            "[host]" => current = Some(String::from("host")),
            "[[destination]]" => {
                destinations += 1;
                current = Some(format!("destination {destinations}"));
            }
            "[[vm]]" => {
                vms += 1;
                devices = 0;
                current = Some(format!("vm {vms}"));
            }
            "[[vm.device]]" => {
                devices += 1;
                current = Some(format!("vm {vms}, device {devices}"));
            }
            "[[step]]" => {
                steps += 1;
                current = Some(format!("step {steps}"));
            }
            _ => {}
        }
    }
    current
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The key whose value (or the key itself) starts at `span.start`.
pub(super) fn key_at(src: &str, span: &Range<usize>) -> Option<String> {
    let rest = src.get(span.start..)?;
    let ident: String = rest.chars().take_while(|c| is_key_char(*c)).collect();
    if !ident.is_empty() && rest[ident.len()..].trim_start().starts_with('=') {
        return Some(ident);
    }
    let line_start = src.get(..span.start)?.rfind('\n').map_or(0, |i| i + 1);
    let prefix = src.get(line_start..span.start)?;
    let eq = prefix.rfind('=')?;
    let key = prefix[..eq].trim_end();
    let start = key
        .char_indices()
        .rev()
        .find(|(_, c)| !is_key_char(*c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let key = &key[start..];
    (!key.is_empty()).then(|| key.to_string())
}

/// The text of the table starting at `span`: up to the next table header, or further if
/// `span` reaches further.
pub(super) fn table_extent(src: &str, span: &Range<usize>) -> Range<usize> {
    let start = span.start.min(src.len());
    let body = src[start..].find('\n').map_or(src.len(), |i| start + i + 1);
    let mut end = body;
    for line in src[body..].split_inclusive('\n') {
        if line.trim_start().starts_with('[') && !line.trim_start().starts_with("[{") {
            break;
        }
        end += line.len();
    }
    start..end.max(span.end.min(src.len()))
}

/// Offset of `key = ...` in the table at `span` (the first occurrence at a word boundary).
pub(super) fn find_key(src: &str, span: &Range<usize>, key: &str) -> Option<usize> {
    let span = &table_extent(src, span);
    let text = src.get(span.clone())?;
    let mut from = 0;
    while let Some(pos) = text.get(from..)?.find(key) {
        let at = from + pos;
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !is_key_char(c));
        let after = &text[at + key.len()..];
        if before_ok && after.trim_start_matches([' ', '\t']).starts_with('=') {
            return Some(span.start + at);
        }
        from = at + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str =
        "[host]\ncpus = 2\n\n[[step]]\nop = \"alloc\"\nexpect = { status = \"ok\" }\n";

    #[test]
    fn lines_and_columns_are_one_based() {
        assert_eq!(line_col(SRC, 0), (1, 1));
        assert_eq!(line_col(SRC, SRC.find("2").unwrap()), (2, 8));
    }

    #[test]
    fn context_counts_tables() {
        assert_eq!(context_at(SRC, 10).as_deref(), Some("host"));
        let at = SRC.find("op").unwrap();
        assert_eq!(context_at(SRC, at).as_deref(), Some("step 1"));
    }

    #[test]
    fn keys_are_found_from_values_and_inline_tables() {
        let value = SRC.find("\"alloc\"").unwrap();
        assert_eq!(key_at(SRC, &(value..value + 7)).as_deref(), Some("op"));
        let inner = SRC.find("\"ok\"").unwrap();
        assert_eq!(key_at(SRC, &(inner..inner + 4)).as_deref(), Some("status"));
        let key = SRC.find("cpus").unwrap();
        assert_eq!(key_at(SRC, &(key..key + 4)).as_deref(), Some("cpus"));
        let all = 0..SRC.len();
        assert_eq!(find_key(SRC, &all, "status"), SRC.find("status"));
        assert_eq!(find_key(SRC, &all, "stat"), None);
        // A header's span reaches its keys, but not the next table's.
        let header = SRC.find("[[step]]").unwrap();
        assert_eq!(find_key(SRC, &(header..header + 8), "op"), SRC.find("op ="));
        assert_eq!(find_key(SRC, &(0..6), "op"), None);
    }
}
