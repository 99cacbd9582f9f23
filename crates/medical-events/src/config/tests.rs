//! The settings of both services as the environment gives them.

use super::*;
use crate::auth::Access;

#[test]
fn ingest_defaults_match_the_original() {
    let config = IngestConfig::from_source(&[
        ("MONGO_URI", "mongodb://db:27017/medical_events"),
        ("PROCESSOR_URL", "http://processor:3001/"),
        ("INGEST_API_KEYS", "key-one-0123456789, key-two-0123456789"),
        ("PROCESSOR_TOKEN", "token-0123456789abcdef"),
    ])
    .unwrap();
    assert!(matches!(&config.access, Access::Required(keys) if keys.len() == 2));
    assert_eq!(config.rate_limit.per_second, 1000);
    assert!(config.tls.is_none());
    assert_eq!(config.port, 3000);
    assert_eq!(config.mongo.timeout, Duration::from_millis(5000));
    assert_eq!(config.processor_url, "http://processor:3001");
}

/// Issue 13, hole 2: a request that stores an event must be able to
/// wait for its write; a time limit shorter than the store's bounds is
/// refused at start-up, naming both settings.
#[test]
fn a_request_timeout_shorter_than_a_write_and_its_settling_read_is_refused() {
    let base = [
        ("MONGO_URI", "mongodb://db:27017/medical_events"),
        ("PROCESSOR_URL", "http://processor:3001/"),
        ("AUTH_DISABLED", "true"),
        ("MONGO_TIMEOUT_MS", "5000"),
        ("REQUEST_TIMEOUT_MS", "30000"),
    ];
    let refused = IngestConfig::from_source(&base).unwrap_err().to_string();
    assert!(refused.contains("REQUEST_TIMEOUT_MS"), "{refused}");
    assert!(refused.contains("MONGO_TIMEOUT_MS"), "{refused}");
    let processor = ProcessorConfig::from_source(&base).unwrap_err().to_string();
    assert!(processor.contains("REQUEST_TIMEOUT_MS"), "{processor}");
    let defaults = IngestConfig::from_source(&[
        ("MONGO_URI", "mongodb://db:27017/medical_events"),
        ("PROCESSOR_URL", "http://processor:3001/"),
        ("AUTH_DISABLED", "true"),
    ])
    .unwrap();
    assert!(
        defaults.limits.request_timeout > crate::store::intake_budget(defaults.mongo.timeout),
        "the defaults must fit"
    );
}

#[test]
fn processor_defaults_are_the_real_timing() {
    let config = ProcessorConfig::from_source(&[
        ("MONGO_URI", "mongodb://db:27017"),
        ("AUTH_DISABLED", "true"),
    ])
    .unwrap();
    assert!(matches!(config.access, Access::Disabled));
    assert_eq!(config.port, 3001);
    assert_eq!(config.processing_min, Duration::from_millis(5000));
    assert_eq!(config.processing_max, Duration::from_millis(6000));
    assert_eq!(config.retry.max_attempts, 5);
}

#[test]
fn merged_writes_default_to_64_and_take_1_to_500() {
    let with = |value: &'static str| {
        ProcessorConfig::from_source(&[
            ("MONGO_URI", "mongodb://db"),
            ("AUTH_DISABLED", "true"),
            ("MERGED_WRITES_MAX", value),
        ])
    };
    let default =
        ProcessorConfig::from_source(&[("MONGO_URI", "mongodb://db"), ("AUTH_DISABLED", "true")]);
    assert_eq!(default.unwrap().max_merged_writes, 64);
    assert_eq!(with("1").unwrap().max_merged_writes, 1);
    for refused in ["0", "501", "many"] {
        let error = with(refused).unwrap_err().to_string();
        assert!(error.starts_with("MERGED_WRITES_MAX="), "{error}");
    }
}

#[test]
fn keys_can_come_from_a_mounted_file() {
    let path = std::env::temp_dir().join(format!("keys-{}", std::process::id()));
    std::fs::write(&path, "file-key-0123456789\nsecond-file-key-0123\n").unwrap();
    let path = path.to_string_lossy().into_owned();
    let config = IngestConfig::from_source(&[
        ("MONGO_URI", "mongodb://db"),
        ("PROCESSOR_URL", "http://p:3001"),
        ("INGEST_API_KEYS_FILE", path.as_str()),
        ("PROCESSOR_TOKEN", "token-0123456789abcdef"),
    ])
    .unwrap();
    assert!(matches!(&config.access, Access::Required(keys) if keys.len() == 2));
    let missing = IngestConfig::from_source(&[
        ("MONGO_URI", "mongodb://db"),
        ("PROCESSOR_URL", "http://p:3001"),
        ("INGEST_API_KEYS_FILE", "/nonexistent/keys"),
    ])
    .unwrap_err();
    assert!(missing.to_string().starts_with("INGEST_API_KEYS_FILE="));
}

#[test]
fn missing_and_invalid_settings_name_the_variable() {
    let missing = IngestConfig::from_source(&[("MONGO_URI", "mongodb://db")]).unwrap_err();
    assert!(missing.to_string().starts_with("PROCESSOR_URL is required"));
    let bad_port =
        ProcessorConfig::from_source(&[("MONGO_URI", "mongodb://db"), ("PORT", "70000")])
            .unwrap_err();
    assert!(
        bad_port
            .to_string()
            .starts_with("PORT=\"70000\" is invalid")
    );
    let bad_uri = ProcessorConfig::from_source(&[("MONGO_URI", "postgres://db")]).unwrap_err();
    assert!(bad_uri.to_string().contains("MONGO_URI"));
    let inverted = ProcessorConfig::from_source(&[
        ("MONGO_URI", "mongodb://db"),
        ("AUTH_DISABLED", "true"),
        ("PROCESSING_MIN_MS", "10"),
        ("PROCESSING_MAX_MS", "5"),
    ])
    .unwrap_err();
    assert!(inverted.to_string().contains("PROCESSING_MAX_MS"));
    let zero_timeout =
        ProcessorConfig::from_source(&[("MONGO_URI", "mongodb://db"), ("MONGO_TIMEOUT_MS", "0")])
            .unwrap_err();
    assert!(zero_timeout.to_string().contains("MONGO_TIMEOUT_MS"));
}

#[test]
fn uri_passwords_are_masked_whole_whatever_they_contain() {
    for (uri, masked) in [
        ("mongodb://u:pw@db/x", "mongodb://u:***@db/x"),
        ("mongodb://u:p/w?x@db/x?w=1", "mongodb://u:***@db/x?w=1"),
        ("mongodb://u:p@w@db", "mongodb://u:***@db"),
        ("u:pw@db", "u:***@db"),
        ("http://u:pw@processor:3001", "http://u:***@processor:3001"),
        ("mongodb://db/x?w=1", "mongodb://db/x?w=1"),
    ] {
        assert_eq!(mask_uri_password(uri), masked, "{uri}");
    }
}

#[test]
fn a_refused_mongo_uri_is_explained_without_its_password() {
    for uri in [
        "mongodb://admin:pa?ss-w0rd@db/x",
        "mongodb://admin:pa%zzss-w0rd@db/x",
        "mongodb://admin:pass-w0rd@db:port/x",
        "mongodb://admin:pass%2Dw0rd@db/x?tls=maybe",
    ] {
        let error = mongodb::options::ConnectionString::parse(uri).unwrap_err();
        let text = invalid_mongo_uri(uri, &error).to_string();
        assert!(text.starts_with("MONGO_URI="), "{text}");
        for secret in ["pa?ss", "pass-w0rd", "pass%2Dw0rd", "zzss"] {
            assert!(!text.contains(secret), "{text}");
        }
    }
    let error = IngestConfig::from_source(&[
        ("MONGO_URI", "mongodb://admin:pass-w0rd@db:port/x"),
        ("PROCESSOR_URL", "http://p:3001"),
        ("AUTH_DISABLED", "true"),
    ])
    .unwrap_err()
    .to_string();
    assert!(error.contains("port must be an integer"), "{error}");
}

/// Issue 16, finding 9: `/metrics` is plain HTTP, so with TLS on the public
/// port it listens on loopback unless `METRICS_BIND` says otherwise.
#[test]
fn metrics_listen_on_loopback_when_tls_is_on() {
    use std::net::IpAddr;
    let none: [(&str, &str); 0] = [];
    assert_eq!(
        shared::metrics_bind(&none, true).unwrap(),
        IpAddr::from([127, 0, 0, 1])
    );
    assert_eq!(
        shared::metrics_bind(&none, false).unwrap(),
        IpAddr::from([0, 0, 0, 0])
    );
    let chosen = [("METRICS_BIND", "0.0.0.0")];
    assert_eq!(
        shared::metrics_bind(&chosen, true).unwrap(),
        IpAddr::from([0, 0, 0, 0])
    );
    let wrong = [("METRICS_BIND", "everywhere")];
    assert!(shared::metrics_bind(&wrong, false).is_err());
}
