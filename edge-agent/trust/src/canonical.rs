//! Canonical JSON (the OLPC dialect securesystemslib and python-tuf sign): object keys
//! sorted by code point, no insignificant whitespace, strings escaping only `\` and `"`,
//! integers only.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error(
        "canonical JSON has no floating-point numbers, but {path} is {number}: sign integers only"
    )]
    Float { path: String, number: String },
}

/// The canonical encoding of `value`.
pub fn encode(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out, &mut String::from("$"))?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>, path: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(CanonicalError::Float {
                    path: path.clone(),
                    number: n.to_string(),
                });
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                write(item, out, path)?;
                path.truncate(len);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(key, out);
                out.push(b':');
                let len = path.len();
                path.push('.');
                path.push_str(key);
                write(&map[key], out, path)?;
                path.truncate(len);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'\\' || b == b'"' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": [1, true, null], "a": {"z": "x", "y": -3}});
        assert_eq!(
            encode(&v).unwrap(),
            br#"{"a":{"y":-3,"z":"x"},"b":[1,true,null]}"#.to_vec()
        );
    }

    #[test]
    fn escapes_only_backslash_and_quote() {
        let v = json!("a\"b\\c\nd\u{e9}");
        assert_eq!(encode(&v).unwrap(), "\"a\\\"b\\\\c\nd\u{e9}\"".as_bytes());
    }

    #[test]
    fn rejects_floats_with_their_path() {
        let err = encode(&json!({"signed": {"x": [0, 1.5]}})).unwrap_err();
        assert!(err.to_string().contains("$.signed.x[1]"), "{err}");
    }

    #[test]
    fn keys_sort_by_code_point() {
        let v = json!({"\u{e9}": 1, "z": 2, "Z": 3});
        assert_eq!(
            encode(&v).unwrap(),
            "{\"Z\":3,\"z\":2,\"\u{e9}\":1}".as_bytes()
        );
    }
}
