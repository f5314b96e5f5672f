//! kiln-sandbox: runs one build step in a fresh set of namespaces (being written).
