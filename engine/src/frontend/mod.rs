//! The Dockerfile frontend, in three stages as BuildKit has it:
//! [`parser`] (raw AST with line/column) → [`instructions`] (typed commands, unexpanded words)
//! → conversion to the build graph. [`shell`] implements word expansion and
//! [`dockerignore`] the `.dockerignore` pattern rules.

pub mod convert;
pub mod dockerignore;
pub mod instructions;
pub mod lint;
pub mod parser;
pub mod shell;
