//! Request parsing that answers every mistake with the API's JSON error: bodies (size, syntax,
//! unknown fields, types), query strings and path ids.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Maps a failure to read the body; the size limit gives 413.
pub(crate) fn body_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body exceeds the size limit (max_body_bytes)",
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("could not read the request body: {e}"),
        )
    }
}

/// Parses a JSON body; an empty body gives `T::default()` when `optional`.
pub(crate) fn json<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
    optional: bool,
) -> Result<T, ApiError> {
    let body = body.map_err(body_rejection)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return if optional {
            Ok(T::default())
        } else {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "a JSON body is required",
            ))
        };
    }
    let de = &mut serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let (code, field) = if inner.is_syntax() || inner.is_eof() {
            ("invalid_json", None)
        } else if message.starts_with("unknown field") {
            ("unknown_field", unknown_field_name(&message).or(Some(path)))
        } else {
            ("invalid_type", Some(path).filter(|p| p != "."))
        };
        let err = ApiError::new(StatusCode::BAD_REQUEST, code, message);
        match field {
            Some(f) => err.field(f),
            None => err,
        }
    })
}

fn unknown_field_name(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// Query-string pairs, with names checked against `allowed`.
pub(crate) fn query(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_param(
            k,
            format!(
                "unknown query parameter {k:?}; expected one of {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(pairs)
}

/// The single value of a parameter; given twice is an error.
pub(crate) fn single<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = values.next();
    if values.next().is_some() {
        return Err(ApiError::bad_param(
            name,
            format!("{name} may be given only once"),
        ));
    }
    Ok(first)
}

/// A non-negative integer parameter.
pub(crate) fn u64_param(pairs: &[(String, String)], name: &str) -> Result<Option<u64>, ApiError> {
    single(pairs, name)?
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_param(
                    name,
                    format!("{name} must be a non-negative integer, got {v:?}"),
                )
            })
        })
        .transpose()
}

/// Checks an instance id taken from the path.
pub(crate) fn instance_id(id: &str) -> Result<(), ApiError> {
    muster_core::model::validate_instance_id(id, "id")
        .map_err(|e| ApiError::bad_param("id", e.message))
}

/// A flag parameter: absent, empty (`?consistent`), `true`/`1` or `false`/`0`.
pub(crate) fn flag(pairs: &[(String, String)], name: &str) -> Result<bool, ApiError> {
    match single(pairs, name)? {
        None | Some("false" | "0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(v) => Err(ApiError::bad_param(
            name,
            format!("{name} must be true or false, got {v:?}"),
        )),
    }
}
