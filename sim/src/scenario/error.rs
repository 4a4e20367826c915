//! Why a scenario file was rejected: where, which field, and what is wrong.

use std::fmt;

/// A scenario file that cannot be run, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file (or `<default>` for the embedded scenario).
    pub origin: String,
    /// Where in the file, when known.
    pub position: Option<Position>,
    /// The table the error is in: `host`, `vm "db"`, `step 7`...
    pub context: Option<String>,
    /// The offending field.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line.
    pub line: usize,
    /// Column (in characters).
    pub column: usize,
}

impl ScenarioError {
    /// The 1-based line, when known.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|p| p.line)
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(Position { line, column }) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        f.write_str(": ")?;
        if let Some(context) = &self.context {
            write!(f, "{context}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScenarioError {}
