//! The committed OpenAPI documents are exactly what the code generates and
//! serves (regenerate with scripts/update-openapi.sh).

use e2e::{InProcessIngest, fresh_database_uri, repo_root};
use serde_json::Value;

fn committed(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("docs/openapi").join(name))
        .expect("committed document")
}

fn generated(binary: &str) -> String {
    let dir = e2e::binary_path("ingest").parent().unwrap().to_path_buf();
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
