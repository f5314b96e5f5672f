//! Canonical JSON bytes: object keys sorted (by UTF-8 bytes), no insignificant whitespace.
//!
//! Written out explicitly rather than relying on `serde_json::Value`'s map order, which changes
//! when any crate in the build enables serde_json's `preserve_order` feature.

use serde_json::Value;

/// Serialises `value` canonically.
#[cfg(test)]
pub(crate) fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

pub(crate) fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // Already in order unless `preserve_order` is on somewhere in the build.
            if !entries.is_sorted_by(|a, b| a.0.as_bytes() <= b.0.as_bytes()) {
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            }
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(v, out);
            }
            out.push(b']');
        }
        Value::String(s) => write_str(s, out),
        scalar => write_scalar(scalar, out),
    }
}

pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    // Serialising a string into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar `Value` into a Vec cannot fail (no I/O error, no non-string key).
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_depth_and_output_is_compact() {
        let v = serde_json::json!({"b": {"z": 1, "a": [true, null, "x\"y"]}, "a": 2.5});
        assert_eq!(
            String::from_utf8_lossy(&to_vec(&v)),
            r#"{"a":2.5,"b":{"a":[true,null,"x\"y"],"z":1}}"#
        );
    }
}
