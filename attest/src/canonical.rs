//! Canonical JSON bytes: object keys sorted (by UTF-8 bytes), no insignificant whitespace.
//!
//! Written out explicitly rather than relying on `serde_json::Value`'s map order, which changes
//! when any crate in the build enables serde_json's `preserve_order` feature.

use serde_json::{Map, Value};

/// Serialises `value` canonically.
#[cfg(test)]
pub(crate) fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

pub(crate) fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_object_with(map, &[], out),
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

/// Writes the object `map` canonically with members whose values are already canonical JSON
/// spliced in by key (`raw`): a document's large arrays are written straight to bytes, not
/// built as [`Value`]s first. A key in both is written once, from `raw`.
pub(crate) fn write_object_with(
    map: &Map<String, Value>,
    raw: &[(&str, &[u8])],
    out: &mut Vec<u8>,
) {
    enum Member<'a> {
        Value(&'a Value),
        Raw(&'a [u8]),
    }
    let mut members: Vec<(&str, Member<'_>)> = map
        .iter()
        .filter(|(k, _)| !raw.iter().any(|(r, _)| r == k))
        .map(|(k, v)| (k.as_str(), Member::Value(v)))
        .chain(raw.iter().map(|&(k, b)| (k, Member::Raw(b))))
        .collect();
    // Already in order unless `preserve_order` is on somewhere in the build (a stable sort of
    // sorted members is one pass).
    members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (k, m)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(k, out);
        out.push(b':');
        match m {
            Member::Value(v) => write(v, out),
            Member::Raw(b) => out.extend_from_slice(b),
        }
    }
    out.push(b'}');
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
    fn spliced_members_take_their_place_in_key_order() {
        let v = serde_json::json!({"b": 1, "z": {"y": 2, "x": 3}, "dup": "from map"});
        let Value::Object(map) = &v else {
            unreachable!("an object")
        };
        let mut out = Vec::new();
        write_object_with(
            map,
            &[("c", b"[1,2]"), ("a", b"{}"), ("dup", b"0")],
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"a":{},"b":1,"c":[1,2],"dup":0,"z":{"x":3,"y":2}}"#
        );
    }

    #[test]
    fn keys_are_sorted_at_every_depth_and_output_is_compact() {
        let v = serde_json::json!({"b": {"z": 1, "a": [true, null, "x\"y"]}, "a": 2.5});
        assert_eq!(
            String::from_utf8_lossy(&to_vec(&v)),
            r#"{"a":2.5,"b":{"a":[true,null,"x\"y"],"z":1}}"#
        );
    }
}
