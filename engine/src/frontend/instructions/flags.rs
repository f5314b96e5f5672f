//! Instruction flags (`--name[=value]`), with BuildKit's `BFlags` rules.

use std::collections::BTreeMap;

use super::{InstructionError, InstructionErrorKind};
use crate::frontend::parser::Node;

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `--x`, `--x=true|false` (case-insensitive).
    Bool,
    /// `--x=value`, at most once.
    Str,
    /// `--x=value`, repeatable.
    Strs,
}

/// A flag's value and where it was written.
#[derive(Debug, Clone)]
pub(super) struct Value {
    pub bool: bool,
    pub strs: Vec<String>,
    pub columns: Vec<usize>,
}

/// The flags given to one instruction.
#[derive(Debug, Default)]
pub(super) struct Flags {
    used: BTreeMap<&'static str, Value>,
}

impl Flags {
    /// Parses `node.flags` against the allowed `spec`; anything else is an error naming the
    /// flag, at its column.
    pub fn parse(node: &Node, spec: &[(&'static str, Kind)]) -> Result<Self, InstructionError> {
        let mut flags = Flags::default();
        for (i, arg) in node.flags.iter().enumerate() {
            let column = node.flag_columns.get(i).copied().unwrap_or(node.column);
            let err = |kind| InstructionError::at(node, column, kind);
            let Some(body) = arg.strip_prefix("--") else {
                return Err(err(InstructionErrorKind::NotAFlag { arg: arg.clone() }));
            };
            if body.is_empty() {
                break;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(key, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                return Err(err(InstructionErrorKind::UnknownFlag {
                    flag: name.to_string(),
                }));
            };
            if flags.used.contains_key(key) && kind != Kind::Strs {
                return Err(err(InstructionErrorKind::DuplicateFlag {
                    flag: name.to_string(),
                }));
            }
            let missing = || {
                err(InstructionErrorKind::MissingFlagValue {
                    flag: name.to_string(),
                })
            };
            let entry = flags.used.entry(key).or_insert(Value {
                bool: false,
                strs: Vec::new(),
                columns: Vec::new(),
            });
            entry.columns.push(column);
            match kind {
                Kind::Bool => {
                    entry.bool = match value.map(str::to_ascii_lowercase).as_deref() {
                        None => true,
                        Some("") => return Err(missing()),
                        Some("true") => true,
                        Some("false") => false,
                        Some(_) => {
                            return Err(err(InstructionErrorKind::BadBoolFlag {
                                flag: name.to_string(),
                                value: value.unwrap_or_default().to_string(),
                            }));
                        }
                    }
                }
                Kind::Str | Kind::Strs => entry.strs.push(value.ok_or_else(missing)?.to_string()),
            }
        }
        Ok(flags)
    }

    /// A boolean flag: `None` when not given.
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.used.get(name).map(|v| v.bool)
    }

    /// A single-valued flag.
    pub fn string(&self, name: &str) -> Option<String> {
        self.used.get(name).and_then(|v| v.strs.last().cloned())
    }

    /// A repeatable flag's values with their columns.
    pub fn strings(&self, name: &str) -> Vec<(String, usize)> {
        self.used
            .get(name)
            .map(|v| {
                v.strs
                    .iter()
                    .cloned()
                    .zip(v.columns.iter().copied())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The column a flag was written at.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.used.get(name).and_then(|v| v.columns.first().copied())
    }
}
