//! Passwords kept out of messages: a URI's password masked, or redacted
//! from a driver's error that quotes it.

use super::ConfigError;

/// `mongodb://user:secret@host` -> `mongodb://user:***@host`, for messages.
///
/// Everything up to the last `@` counts as user information, whatever it
/// contains: a password with an unencoded `/`, `?` or `@` (the mistake that
/// makes a URI invalid in the first place) is masked whole. A URI whose
/// query holds an `@` loses more than its password; a message can afford that.
pub fn mask_uri_password(uri: &str) -> String {
    let (scheme, rest) = match uri.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, uri),
    };
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return uri.to_owned();
    };
    let user = userinfo.split(':').next().unwrap_or("");
    match scheme {
        Some(scheme) => format!("{scheme}://{user}:***@{after}"),
        None => format!("{user}:***@{after}"),
    }
}

/// The password in `uri`, as written and percent-decoded (empty if none).
fn uri_password(uri: &str) -> Vec<String> {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let Some((_, password)) = rest
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
    else {
        return Vec::new();
    };
    let mut forms = vec![password.to_owned()];
    if let Some(decoded) = percent_decode(password)
        && decoded != password
    {
        forms.push(decoded);
    }
    forms
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

/// `message` with the password of `uri` replaced by `***`.
fn redact_uri_password(uri: &str, message: &str) -> String {
    let mut message = message.to_owned();
    for password in uri_password(uri) {
        // Shorter ones would mask unrelated letters.
        if password.chars().count() >= 3 {
            message = message.replace(&password, "***");
        }
    }
    message
}

/// The driver refused `uri` (`error`): the setting's error, without the
/// password. The driver's reason is taken from parsing the URI with its
/// password masked, so it cannot quote it (a password with an unencoded
/// `?` would otherwise be quoted back as a port or an option); if only the
/// original fails to parse, the password itself is what is malformed.
pub fn invalid_mongo_uri(uri: &str, error: &mongodb::error::Error) -> ConfigError {
    use mongodb::options::ConnectionString;
    let masked = mask_uri_password(uri);
    let reason = match ConnectionString::parse(&masked) {
        Err(masked_error) if masked != uri => driver_reason(&masked_error),
        Ok(_) if ConnectionString::parse(uri).is_err() => {
            "the user name or password is malformed (percent-encode : / ? # [ ] @ % in them)"
                .to_owned()
        }
        // No password in the URI, or one refused only at start-up.
        _ => driver_reason(error),
    };
    ConfigError::Invalid {
        name: "MONGO_URI",
        value: masked,
        reason: redact_uri_password(uri, &reason),
    }
}

fn driver_reason(error: &mongodb::error::Error) -> String {
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::InvalidArgument { message, .. }
        | mongodb::error::ErrorKind::DnsResolve { message, .. } => message.clone(),
        _ => error.to_string(),
    }
}
