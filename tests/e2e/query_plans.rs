//! Query plans are a tested property: every hot query shape the services
//! use (`store::shapes`) is explained by the test server, which must answer
//! it from an index: no collection scan anywhere, and no in-memory sort
//! except over one patient's own documents.
//!
//! `make test` runs this file against SecantusDB's Python server and again
//! against its compiled server (the one `make run` uses). mongo:7 is covered
//! by reasoning in ARCHITECTURE.md ("Query plans").

use crate::support::{event_body, fresh_database_uri};
use medical_events::event::{EventId, NewEvent};
use medical_events::store::shapes::{Shape, SortScope};
use medical_events::store::{EnqueueOutcome, IntakePolicy, Store, Submission, shapes};
use mongodb::bson::{Bson, Document, doc};
use std::time::Duration;

/// Stages of the winning plan, outermost first, with their index key patterns.
fn stages(plan: &Document) -> Vec<(String, Option<Document>)> {
    let mut found = Vec::new();
    let mut next = Some(plan);
    while let Some(stage) = next {
        found.push((
            stage.get_str("stage").unwrap_or("?").to_owned(),
            stage.get_document("keyPattern").ok().cloned(),
        ));
        next = stage.get_document("inputStage").ok();
        if let Ok(inputs) = stage.get_array("inputStages") {
            for input in inputs {
                if let Bson::Document(input) = input {
                    found.extend(stages(input));
                }
            }
        }
    }
    found
}

fn uses_index(stage: &str) -> bool {
    stage.contains("IXSCAN") || stage == "IDHACK" || stage == "COUNT_SCAN"
}

async fn explain(store: &Store, shape: &Shape) -> Document {
    let command = match shape.pipeline() {
        // Run as an aggregation: its match, sort and limit are planned as
        // the find's would be.
        Some(pipeline) => {
            let mut aggregate = doc! {
                "aggregate": shape.collection.name(),
                "pipeline": pipeline,
                "cursor": {},
            };
            if let Some(hint) = shape.hint {
                aggregate.insert("hint", hint);
            }
            aggregate
        }
        None => {
            let mut find = doc! {
                "find": shape.collection.name(),
                "filter": shape.filter.clone(),
            };
            if let Some(sort) = &shape.sort {
                find.insert("sort", sort.clone());
            }
            if let Some(projection) = &shape.projection {
                find.insert("projection", projection.clone());
            }
            if let Some(limit) = shape.limit {
                find.insert("limit", limit);
            }
            if let Some(hint) = shape.hint {
                find.insert("hint", hint);
            }
            find
        }
    };
    let explained = store
        .database()
        .run_command(doc! { "explain": command, "verbosity": "queryPlanner" })
        .await
        .unwrap_or_else(|e| panic!("{}: explain failed: {e}", shape.name));
    // An aggregation's plan is its first stage's (`$cursor`) where the
    // server does not lift it to the top.
    let cursor_planner = || {
        explained
            .get_array("stages")
            .ok()?
            .first()?
            .as_document()?
            .get_document("$cursor")
            .ok()?
            .get_document("queryPlanner")
            .ok()
    };
    explained
        .get_document("queryPlanner")
        .ok()
        .or_else(cursor_planner)
        .and_then(|p| p.get_document("winningPlan").ok())
        .unwrap_or_else(|| panic!("{}: no winning plan in {explained}", shape.name))
        .clone()
}

/// A store with enough events that a scan would be visible to any planner:
/// many patients, several events each, some finished.
async fn populated_store() -> Store {
    let store = Store::connect(&fresh_database_uri(), Duration::from_secs(5), "plans")
        .await
        .unwrap();
    store.ensure_indexes().await.unwrap();
    for p in 0..60 {
        for n in 0..5 {
            let patient = format!("patient-{p}");
            let event = NewEvent::parse(&event_body(&patient, n)).unwrap();
            let submission = Submission {
                event: &event,
                event_id: EventId::new_time_ordered(),
                client: crate::support::CLIENT,
                key: None,
                deduplicate: true,
                traceparent: None,
                size_hint: 100,
                origin: None,
            };
            let outcome = store
                .enqueue(&submission, n as i64 + 1, &IntakePolicy::default())
                .await
                .unwrap();
            assert!(matches!(outcome, EnqueueOutcome::Accepted { .. }));
        }
    }
    store
        .database()
        .collection::<Document>("queued_events")
        .update_many(
            doc! { "seq": { "$lte": 3 } },
            doc! { "$set": { "status": "processed" } },
        )
        .await
        .unwrap();
    // Outcomes over many milliseconds, several per millisecond, two clients.
    let outcomes: Vec<Document> = (0..300)
        .map(|n: i64| {
            doc! {
                "eventId": EventId::new_time_ordered().to_string(),
                "patientId": format!("patient-{}", n % 60),
                "client": if n % 2 == 0 { "client" } else { "other" },
                "processedAt": mongodb::bson::DateTime::from_millis(1_000 + n / 3),
                "result": { "status": "success" },
            }
        })
        .collect();
    store
        .database()
        .collection::<Document>("processed_events")
        .insert_many(outcomes)
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn every_hot_query_is_answered_from_an_index() {
    let store = populated_store().await;
    let mut failures = Vec::new();
    for shape in shapes::hot_for_explain() {
        let plan = explain(&store, &shape).await;
        let stages = stages(&plan);
        let names: Vec<&str> = stages.iter().map(|(s, _)| s.as_str()).collect();
        eprintln!("{:<45} {names:?}", shape.name);
        if names.contains(&"COLLSCAN") {
            failures.push(format!("{}: collection scan {names:?}", shape.name));
        }
        if !names.iter().any(|s| uses_index(s)) {
            failures.push(format!("{}: no index in {names:?}", shape.name));
        }
        if names.contains(&"SORT") {
            // Only a sort over one patient's documents is acceptable (the
            // index bounds must pin the patient), or a re-sort of a range
            // read from the index whose order the shape declares.
            let bounded = match shape.sort_scope {
                SortScope::OnePatient => {
                    shape.filter.get_str("patientId").is_ok()
                        && stages.iter().any(|(stage, keys)| {
                            uses_index(stage)
                                && keys.as_ref().is_some_and(|k| k.contains_key("patientId"))
                        })
                }
                SortScope::IndexOrder => stages
                    .iter()
                    .any(|(stage, keys)| uses_index(stage) && keys.as_ref() == shape.sort.as_ref()),
                SortScope::None => false,
            };
            if !bounded {
                failures.push(format!(
                    "{}: in-memory sort beyond one patient {names:?}",
                    shape.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_shape_with_a_sort_declares_its_scope() {
    for shape in shapes::hot_for_explain() {
        if shape.sort.is_none() {
            continue;
        }
        match shape.sort_scope {
            SortScope::OnePatient => {
                assert!(shape.filter.contains_key("patientId"), "{}", shape.name)
            }
            // The explain test checks the hinted index's keys are the sort.
            SortScope::IndexOrder => assert!(shape.hint.is_some(), "{}", shape.name),
            SortScope::None => panic!("{}: a sort without a scope", shape.name),
        }
    }
}
