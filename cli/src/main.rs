//! `kiln`: the command line.
fn main() {}
