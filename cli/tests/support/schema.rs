//! Checks a gate's input against its documented JSON Schema (`policy/schema/<gate>.json`).
//! Included by path by the tests that use it.

use serde_json::Value;

/// Panics, listing every violation, when `input` does not match `policy/schema/<gate>.json`.
pub fn assert_matches_schema(gate: &str, input: &Value) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/../policy/schema/{gate}.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = v
        .iter_errors(input)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{gate} input does not match policy/schema/{gate}.json: {errors:#?}\n{input:#}"
    );
}
