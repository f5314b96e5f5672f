//! Small typed accessors over `serde_json::Value` for the sigstore documents: every failure
//! names the field (a JSON path) and what was wrong with it.

use base64::Engine as _;
use serde_json::{Map, Value};

/// Why a field of a sigstore JSON document is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldError {
    /// A required field is absent (or `null`).
    #[error("{field}: missing")]
    Missing {
        /// JSON path of the field.
        field: String,
    },
    /// The field has the wrong JSON type.
    #[error("{field}: expected {expected}")]
    WrongType {
        /// JSON path of the field.
        field: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Not standard base64.
    #[error("{field}: not base64: {reason}")]
    Base64 {
        /// JSON path of the field.
        field: String,
        /// What the decoder said.
        reason: String,
    },
    /// An int64 field is negative.
    #[error("{field}: negative value {value}")]
    Negative {
        /// JSON path of the field.
        field: String,
        /// The value.
        value: i64,
    },
    /// An int64 field is not an integer.
    #[error("{field}: not an int64: {value}")]
    NotInteger {
        /// JSON path of the field.
        field: String,
        /// The value as found.
        value: String,
    },
    /// More items than kiln accepts.
    #[error("{field}: {count} items, over the limit of {limit}")]
    TooMany {
        /// JSON path of the field.
        field: String,
        /// Items found.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Present and well typed, but not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// JSON path of the field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Standard base64 (with padding), the encoding protobuf JSON writes for `bytes`. Protobuf JSON
/// parsers also accept URL-safe base64 and missing padding; sigstore documents use standard.
pub(crate) fn b64(field: &str, text: &str) -> Result<Vec<u8>, FieldError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| FieldError::Base64 {
            field: field.to_owned(),
            reason: e.to_string(),
        })
}

/// Standard base64 with padding.
pub(crate) fn b64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A JSON object with its path, for field errors.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub(crate) map: &'a Map<String, Value>,
    pub(crate) path: &'a str,
}

pub(crate) fn path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn as_obj<'a>(value: &'a Value, path: &'a str) -> Result<Obj<'a>, FieldError> {
    match value {
        Value::Object(map) => Ok(Obj { map, path }),
        _ => Err(FieldError::WrongType {
            field: path.to_owned(),
            expected: "an object",
        }),
    }
}

impl<'a> Obj<'a> {
    /// The field, `None` when absent or `null` (protobuf JSON writes defaults either way).
    pub(crate) fn opt(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn req(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.opt(key).ok_or_else(|| FieldError::Missing {
            field: path(self.path, key),
        })
    }

    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        match self.opt(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FieldError::WrongType {
                field: path(self.path, key),
                expected: "a string",
            }),
        }
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&'a str, FieldError> {
        self.opt_str(key)?.ok_or_else(|| FieldError::Missing {
            field: path(self.path, key),
        })
    }

    pub(crate) fn opt_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, FieldError> {
        self.opt_str(key)?
            .map(|s| b64(&path(self.path, key), s))
            .transpose()
    }

    pub(crate) fn req_bytes(&self, key: &str) -> Result<Vec<u8>, FieldError> {
        b64(&path(self.path, key), self.req_str(key)?)
    }

    /// A protobuf JSON int64 that must not be negative: a string of decimal digits or a JSON
    /// number.
    pub(crate) fn opt_u63(&self, key: &str) -> Result<Option<u64>, FieldError> {
        let field = || path(self.path, key);
        let value = match self.opt(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let parsed: Option<i64> = match value {
            Value::String(s) => {
                let digits = s.strip_prefix('-').unwrap_or(s);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    s.parse::<i64>().ok()
                }
            }
            Value::Number(n) => n.as_i64(),
            _ => {
                return Err(FieldError::WrongType {
                    field: field(),
                    expected: "an int64 (string or number)",
                });
            }
        };
        let value_text = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match parsed {
            None => Err(FieldError::NotInteger {
                field: field(),
                value: value_text.chars().take(40).collect(),
            }),
            Some(v) if v < 0 => Err(FieldError::Negative {
                field: field(),
                value: v,
            }),
            Some(v) => Ok(Some(v.unsigned_abs())),
        }
    }

    pub(crate) fn req_u63(&self, key: &str) -> Result<u64, FieldError> {
        self.opt_u63(key)?.ok_or_else(|| FieldError::Missing {
            field: path(self.path, key),
        })
    }

    /// An array field (absent = empty), at most `limit` items.
    pub(crate) fn arr(&self, key: &str, limit: usize) -> Result<&'a [Value], FieldError> {
        match self.opt(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) if items.len() > limit => Err(FieldError::TooMany {
                field: path(self.path, key),
                count: items.len(),
                limit,
            }),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(FieldError::WrongType {
                field: path(self.path, key),
                expected: "an array",
            }),
        }
    }
}
