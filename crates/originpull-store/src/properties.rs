//! The properties the object key parser promises for any request path, written once as a check
//! that the property tests (`tests/properties.rs`) and the fuzz target `key_parser` (`fuzz/`)
//! run: an `Err` is a bug in originpull, never in the input.

use crate::key::{ObjectKey, RequestTarget, MAX_KEY_BYTES};

/// What a check found broken, with the input that broke it.
pub type Violation = String;

/// The key parser: `path` is refused, or its key has no control character, no `.`/`..`
/// segment, at most [`MAX_KEY_BYTES`], and parses back from its origin path to itself. With an
/// index document, a folder names `folder + index_document` and an object is never a folder.
pub fn key_parser(path: &str, index_document: &str) -> Result<(), Violation> {
    if let Ok(key) = ObjectKey::from_request_path(path) {
        let origin_path = key.origin_path();
        let again = ObjectKey::from_request_path(&origin_path);
        if again.as_ref() != Ok(&key) {
            return Err(format!(
                "{path:?} is key {key:?}, but its origin path {origin_path:?} is {again:?}"
            ));
        }
        if key.as_str().chars().any(char::is_control) {
            return Err(format!("{path:?} is key {key:?}, with a control character"));
        }
        if key
            .as_str()
            .split(['/', '\\'])
            .any(|s| s == "." || s == "..")
        {
            return Err(format!("{path:?} is key {key:?}, with a dot segment"));
        }
        if key.as_str().len() > MAX_KEY_BYTES {
            return Err(format!("{path:?} is a key of {} bytes", key.as_str().len()));
        }
    }
    match RequestTarget::parse(path, Some(index_document)) {
        Ok(RequestTarget::Object {
            key,
            folder: Some(folder),
        }) => {
            if key.as_str() != format!("{folder}{index_document}") {
                return Err(format!(
                    "{path:?}: key {key:?} is not folder {folder:?} + index"
                ));
            }
            if !(folder.is_empty() || folder.ends_with('/')) {
                return Err(format!("{path:?}: folder {folder:?} does not end with /"));
            }
        }
        Ok(RequestTarget::Object { key, folder: None }) => {
            if key.as_str().ends_with('/') {
                return Err(format!("{path:?}: key {key:?} names a folder"));
            }
        }
        Ok(RequestTarget::Folder { path: folder }) => {
            return Err(format!(
                "{path:?} is folder {folder:?} despite an index document"
            ));
        }
        Err(_) => {}
    }
    let _ = RequestTarget::parse(path, None);
    Ok(())
}
