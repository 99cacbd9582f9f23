//! The committed OpenAPI documents are exactly what the code generates and
//! serves (regenerate with scripts/update-openapi.sh).

use crate::support::{InProcessIngest, fresh_database_uri, repo_root};
use serde_json::Value;

fn committed(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("docs/openapi").join(name))
        .expect("committed document")
}

fn generated(binary: &str) -> String {
    let dir = crate::support::binary_path("ingest")
        .parent()
        .unwrap()
        .to_path_buf();
    let output = std::process::Command::new(dir.join(binary))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn committed_documents_match_the_code() {
    for (binary, file) in [("ingest", "ingest.json"), ("processor", "processor.json")] {
        assert!(
            generated(binary) == committed(file),
            "docs/openapi/{file} is out of date: run scripts/update-openapi.sh"
        );
    }
}

#[tokio::test]
async fn the_served_document_is_the_committed_one_and_describes_3_1() {
    let ingest = InProcessIngest::start(&fresh_database_uri(), "http://127.0.0.1:9").await;
    let served: Value = reqwest::get(format!("{}/openapi.json", ingest.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let committed: Value = serde_json::from_str(&committed("ingest.json")).unwrap();
    assert_eq!(served, committed);
    assert_eq!(served["openapi"], "3.1.0");
    let responses = served["paths"]["/events"]["post"]["responses"]
        .as_object()
        .unwrap();
    for status in ["202", "400", "401", "413", "415", "422", "429", "503"] {
        assert!(
            responses.contains_key(status),
            "POST /events does not document {status}"
        );
    }
}

/// The committed document `name`, parsed.
fn document(name: &str) -> Value {
    serde_json::from_str(&committed(name)).unwrap()
}

#[test]
fn the_documents_describe_replays_unknown_outcomes_clients_and_leases() {
    let ingest = document("ingest.json");
    let post = &ingest["paths"]["/events"]["post"];
    assert!(
        post["responses"]["202"]["headers"]["Idempotent-Replayed"].is_object(),
        "POST /events 202 documents Idempotent-Replayed"
    );
    // A 503 names the problem type of an unknown outcome and its eventId.
    let problem = &ingest["components"]["schemas"]["Problem"];
    assert_eq!(
        post["responses"]["503"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    assert!(
        problem["properties"]["type"]["description"]
            .as_str()
            .unwrap()
            .contains("/problems/outcome-unknown")
    );
    assert_eq!(problem["properties"]["eventId"]["format"], "uuid");
    // A client reads its own events; another client's is a 404.
    let get = &ingest["paths"]["/events/{eventId}"]["get"];
    assert!(
        get["responses"]["404"]["description"]
            .as_str()
            .unwrap()
            .contains("another client")
    );
    let state = &ingest["components"]["schemas"]["EventView"]["properties"];
    assert_eq!(state["client"]["type"], "string");
    assert_eq!(
        ingest["components"]["schemas"]["ApiStatus"]["enum"],
        serde_json::json!([
            "queued",
            "processing",
            "processed",
            "failed",
            "parked",
            "skipped"
        ])
    );

    let processor = document("processor.json");
    let queue = &processor["paths"]["/queue"]["post"];
    assert!(
        queue["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Event-Stored" && p["in"] == "header"),
        "POST /queue documents the Event-Stored header"
    );
    let ready = &processor["paths"]["/ready"]["get"]["responses"]["200"];
    assert_eq!(
        ready["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Ready"
    );
    // Optional in the schema (ingest's readiness has no leases), an integer when present.
    assert!(
        processor["components"]["schemas"]["Ready"]["properties"]["leases"]["type"]
            .as_array()
            .is_some_and(|types| types.contains(&"integer".into()))
    );
}
