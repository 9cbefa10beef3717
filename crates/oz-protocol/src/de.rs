//! Field decoders shared by the wire types.
//!
//! They bring serde's behaviour closer to what Go's `encoding/json` accepts
//! on the official side:
//!
//! * a JSON `null` for a plain (non-pointer) Go field leaves the zero value in
//!   place, so [`null_as_default`] maps `null` to `Default::default()`;
//! * a Go struct only decodes from a JSON object, while a serde-derived struct
//!   would also accept an array positionally (`"task": []` would become an
//!   empty task). [`object`], [`object_list`] and [`from_object`] reject
//!   anything that is not an object.

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _, Unexpected};
use serde_json::Value;

/// Decode `T`, treating an explicit `null` like an absent field.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An optional nested object: absent or `null` gives `None`, an object is
/// decoded as `T`, anything else is a type error.
pub(crate) fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(v) => from_object(v).map(Some).map_err(D::Error::custom),
    }
}

/// An optional list of objects: absent or `null` gives `None`; every element
/// must be an object.
pub(crate) fn object_list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    match Option::<Vec<Value>>::deserialize(d)? {
        None => Ok(None),
        Some(items) => items
            .into_iter()
            .map(from_object)
            .collect::<Result<Vec<T>, _>>()
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// Decode `T` from `value`, which must be a JSON object.
pub(crate) fn from_object<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    if value.is_object() {
        serde_json::from_value(value)
    } else {
        Err(serde_json::Error::invalid_type(
            unexpected(&value),
            &"a JSON object",
        ))
    }
}

/// Describe a JSON value for a serde type error.
pub(crate) fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Unexpected::Signed(i),
            (_, Some(u), _) => Unexpected::Unsigned(u),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}
