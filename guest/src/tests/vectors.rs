//! The spec's test vectors (`spec/vectors/*.vec`, format in its README), read by name: what
//! an implementation written from the spec alone sends and answers.

use std::format;
use std::string::String;
use std::vec::Vec;

const REQUESTS: &str = include_str!("../../../spec/vectors/requests.vec");
const REQUESTS_EXT: &str = include_str!("../../../spec/vectors/requests-ext.vec");
const RESPONSES: &str = include_str!("../../../spec/vectors/responses.vec");
const RESPONSES_EXT: &str = include_str!("../../../spec/vectors/responses-ext.vec");
const EVENTS: &str = include_str!("../../../spec/vectors/events.vec");

/// The `bytes` of entry `[name]` in `file`.
fn bytes_in(file: &str, name: &str) -> Option<Vec<u8>> {
    let header = format!("[{name}]");
    let mut lines = file.lines().skip_while(|l| l.trim() != header).skip(1);
    let mut hex = String::new();
    let mut in_bytes = false;
    for line in lines.by_ref() {
        if line.starts_with('[') {
            break;
        }
        if let Some(rest) = line.strip_prefix("bytes =") {
            in_bytes = true;
            hex.push_str(rest);
        } else if in_bytes && line.starts_with(char::is_whitespace) {
            hex.push_str(line);
        } else {
            in_bytes = false;
        }
    }
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect();
    (!bytes.is_empty()).then_some(bytes)
}

/// The bytes of the vector `name`, wherever it is.
pub(crate) fn vector(name: &str) -> Vec<u8> {
    [REQUESTS, REQUESTS_EXT, RESPONSES, RESPONSES_EXT, EVENTS]
        .iter()
        .find_map(|file| bytes_in(file, name))
        .unwrap_or_else(|| panic!("no vector [{name}]"))
}

#[test]
fn vectors_are_found_by_name() {
    assert_eq!(
        vector("query"),
        [1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(vector("alloc-msix-any-1-to-4").len(), 64);
    assert_eq!(vector("reprogram").len(), 32);
}
