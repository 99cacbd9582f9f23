//! HL7 v2 over MLLP into ingest: a real listener, the real database, a
//! client written here. Every case checks what was stored, not only what
//! was answered.

use std::time::Duration;

use mongodb::bson::{Document, doc};

use crate::support::checks::Db;
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::mllp::{MllpClient, Reply, ack, acks, adt, oru, segment};
use crate::support::{InProcessIngest, fresh_database_uri};

async fn start(options: &str) -> (InProcessIngest, Db) {
    let uri = fresh_database_uri();
    let ingest = InProcessIngest::start_with(InProcessIngest::mllp_config(&uri, options)).await;
    (ingest, Db::connect(&uri).await)
}

async fn connect(ingest: &InProcessIngest) -> MllpClient {
    MllpClient::connect(ingest.mllp_address()).await
}

fn hl7(event: &Document) -> &Document {
    event
        .get_document("data")
        .unwrap()
        .get_document("hl7")
        .unwrap()
}

/// The control ids of a patient's stored events, in sequence order.
async fn stored_ids(db: &Db, patient: &str) -> Vec<String> {
    db.events_of(patient)
        .await
        .iter()
        .map(|e| hl7(e).get_str("controlId").unwrap().to_owned())
        .collect()
}

async fn all_events(db: &Db) -> Vec<Document> {
    db.find("queued_events", doc! {}, doc! { "_id": 1 }).await
}

#[tokio::test]
async fn a_lab_result_and_an_admission_are_stored_with_patient_type_and_time_then_acked() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;

    let answer = client.exchange(&oru("LAB-1", "MRN-100", "7.0")).await;
    assert_eq!(ack(&answer), ("AA".to_owned(), "LAB-1".to_owned()));
    let msh = segment(&answer, "MSH").unwrap();
    assert_eq!(msh[8], "ACK^R01^ACK", "MSH-9 of {answer:?}");
    assert_eq!(
        (msh[2].as_str(), msh[3].as_str()),
        ("EventSvc", "EVSVC"),
        "MSH-3/4 are the receiver"
    );
    assert_eq!(
        (msh[4].as_str(), msh[5].as_str()),
        ("LabSys", "NORTHLAB"),
        "MSH-5/6 are the sender"
    );
    assert_ne!(msh[9], "LAB-1", "the ACK has its own control id");

    let answer = client.exchange(&adt("ADT-1", "MRN-200")).await;
    assert_eq!(ack(&answer), ("AA".to_owned(), "ADT-1".to_owned()));

    let lab = db.events_of("MRN-100").await;
    assert_eq!(lab.len(), 1);
    assert_eq!(lab[0].get_str("type").unwrap(), "ORU^R01");
    assert_eq!(
        lab[0].get_str("ts").unwrap(),
        "2024-04-10T16:02:27.000Z",
        "OBR-7"
    );
    assert_eq!(lab[0].get_str("client").unwrap(), crate::support::CLIENT);
    assert_eq!(hl7(&lab[0]).get_str("controlId").unwrap(), "LAB-1");
    assert!(
        hl7(&lab[0])
            .get_str("message")
            .unwrap()
            .contains("OBX|1|NM|wbc^Wbc||7.0")
    );
    let admission = db.events_of("MRN-200").await;
    assert_eq!(admission.len(), 1);
    assert_eq!(admission[0].get_str("type").unwrap(), "ADT^A01");
    assert_eq!(
        admission[0].get_str("ts").unwrap(),
        "2024-01-10T04:55:02.000Z",
        "EVN-2"
    );

    // The client's key reads it, with its source.
    let event_id = lab[0].get_str("eventId").unwrap();
    let view: serde_json::Value = crate::support::client()
        .get(format!("{}/events/{event_id}", ingest.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["patientId"], "MRN-100");
    assert_eq!(view["source"]["kind"], "mllp");
    assert_eq!(view["source"]["controlId"], "LAB-1");
    assert_eq!(view["source"]["sendingApplication"], "LabSys");
    assert_eq!(view["source"]["sendingFacility"], "NORTHLAB");
    assert!(
        view["source"]["listener"]
            .as_str()
            .unwrap()
            .starts_with("test-client@")
    );

    // The operator finds it by control id and sender.
    let found: serde_json::Value = crate::support::admin_client()
        .get(format!(
            "{}/admin/messages?controlId=LAB-1&sendingApplication=LabSys",
            ingest.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["events"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["events"][0]["eventId"], event_id);
}

#[tokio::test]
async fn a_resend_after_a_lost_ack_is_acked_again_and_stored_once() {
    let (ingest, db) = start("").await;
    let message = oru("LOST-1", "MRN-LOST", "5.5");
    // The sender writes the message and drops the connection before the ACK.
    let mut first = connect(&ingest).await;
    first.send(&message).await;
    drop(first);
    crate::support::wait_until(Duration::from_secs(20), "the message stored", || async {
        db.count("queued_events", doc! { "patientId": "MRN-LOST" })
            .await
            == 1
    })
    .await;
    // It reconnects and resends (some senders restamp MSH-7): acked, not stored again.
    let mut again = connect(&ingest).await;
    let restamped = message.replace("20240411070545", "20240411070999");
    assert_eq!(ack(&again.exchange(&restamped).await).0, "AA");
    assert_eq!(ack(&again.exchange(&message).await).0, "AA");
    assert_eq!(db.count("queued_events", doc! {}).await, 1);
}

#[tokio::test]
async fn the_same_control_id_with_other_content_is_a_second_event_marked_reused() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    assert_eq!(
        ack(&client.exchange(&oru("REUSED-1", "MRN-R", "1.0")).await).0,
        "AA"
    );
    assert_eq!(
        ack(&client.exchange(&oru("REUSED-1", "MRN-R", "2.0")).await).0,
        "AA"
    );
    let events = db.events_of("MRN-R").await;
    assert_eq!(
        events.len(),
        2,
        "a clinical message is never dropped for its id"
    );
    let reused: Vec<bool> = events
        .iter()
        .map(|e| {
            e.get_document("source")
                .unwrap()
                .get_bool("reusedControlId")
                .unwrap_or(false)
        })
        .collect();
    assert_eq!(reused, [false, true]);
}

#[tokio::test]
async fn five_pipelined_frames_in_one_write_get_five_acks_in_order_and_keep_that_sequence() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    let ids: Vec<String> = (1..=5).map(|n| format!("PIPE-{n}")).collect();
    let mut bytes = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        bytes.extend(MllpClient::frame(
            oru(id, "MRN-PIPE", &n.to_string()).as_bytes(),
        ));
    }
    client.write(&bytes).await;
    let mut answered = Vec::new();
    for _ in 0..5 {
        answered.push(ack(&client.reply().await));
    }
    let expected: Vec<(String, String)> =
        ids.iter().map(|id| ("AA".to_owned(), id.clone())).collect();
    assert_eq!(answered, expected);
    let stored: Vec<(i64, String)> = db
        .events_of("MRN-PIPE")
        .await
        .iter()
        .map(|e| {
            (
                e.get_i64("seq").unwrap(),
                hl7(e).get_str("controlId").unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(i64, String)> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (n as i64 + 1, id.clone()))
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn noise_before_a_start_block_and_lf_line_ends_are_read() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    let mut bytes = b"\r\n\x00garbage".to_vec();
    bytes.extend(MllpClient::frame(oru("NOISE-1", "MRN-N", "1").as_bytes()));
    client.write(&bytes).await;
    assert_eq!(
        ack(&client.reply().await),
        ("AA".to_owned(), "NOISE-1".to_owned())
    );
    let lf = oru("LF-1", "MRN-N", "2").replace('\r', "\n");
    assert_eq!(
        ack(&client.exchange(&lf).await),
        ("AA".to_owned(), "LF-1".to_owned())
    );
    let crlf = oru("CRLF-1", "MRN-N", "3").replace('\r', "\r\n");
    assert_eq!(
        ack(&client.exchange(&crlf).await),
        ("AA".to_owned(), "CRLF-1".to_owned())
    );
    // A line of only spaces or tabs is blank, not a segment to refuse.
    let padded = format!("{} \r\t\r", oru("PAD-1", "MRN-N", "4"));
    let answer = client.exchange(&padded).await;
    assert_eq!(
        ack(&answer),
        ("AA".to_owned(), "PAD-1".to_owned()),
        "{answer}"
    );
    let stored = db.events_of("MRN-N").await;
    assert_eq!(stored.len(), 4);
    assert!(
        hl7(&stored[3])
            .get_str("message")
            .unwrap()
            .ends_with("|F\r")
    );
}

#[tokio::test]
async fn a_message_without_a_patient_or_not_hl7_is_refused_and_nothing_is_stored() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    let no_pid =
        "MSH|^~\\&|LabSys|NORTHLAB|||20240411070545||ORU^R01|NOPID-1|P|2.5.1\rOBR|1||1|cbc\r";
    let answer = client.exchange(no_pid).await;
    assert_eq!(ack(&answer), ("AE".to_owned(), "NOPID-1".to_owned()));
    let err = segment(&answer, "ERR").expect("an ERR segment");
    assert!(
        err[2].starts_with("PID^1^3"),
        "ERR-2 names PID-3: {answer:?}"
    );
    assert!(
        err[3].starts_with("101"),
        "ERR-3 is 0357 code 101 (required field missing): {answer:?}"
    );

    let empty_id = oru("EMPTY-1", "", "1");
    assert_eq!(ack(&client.exchange(&empty_id).await).0, "AE");

    let answer = client.exchange("this is not HL7").await;
    assert_eq!(ack(&answer), ("AR".to_owned(), String::new()));

    let test_mode = oru("TEST-1", "MRN-T", "1").replace("|P|2.5.1", "|T|2.5.1");
    assert_eq!(
        ack(&client.exchange(&test_mode).await).0,
        "AR",
        "MSH-11 T is refused by default"
    );
    let old = oru("V-1", "MRN-T", "1").replace("|P|2.5.1", "|P|3.0");
    assert_eq!(
        ack(&client.exchange(&old).await).0,
        "AR",
        "an unsupported version"
    );
    assert_eq!(db.count("queued_events", doc! {}).await, 0);
    // The connection still works.
    assert_eq!(
        ack(&client.exchange(&oru("OK-1", "MRN-T", "1")).await).0,
        "AA"
    );
}

#[tokio::test]
async fn an_oversized_frame_is_refused_and_skipped_to_its_end_and_the_next_is_read() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::mllp_config(&uri, "");
    config.mllp.max_message_bytes = 2048;
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&uri).await;
    let mut client = connect(&ingest).await;
    let big = oru("BIG-1", "MRN-BIG", &"9".repeat(4000));
    let mut bytes = MllpClient::frame(big.as_bytes());
    bytes.extend(MllpClient::frame(oru("SMALL-1", "MRN-BIG", "1").as_bytes()));
    client.write(&bytes).await;
    let answer = client.reply().await;
    assert_eq!(
        ack(&answer),
        ("AE".to_owned(), "BIG-1".to_owned()),
        "{answer}"
    );
    assert!(answer.contains("larger than 2048 bytes"), "{answer}");
    assert_eq!(
        ack(&client.reply().await),
        ("AA".to_owned(), "SMALL-1".to_owned())
    );
    let stored = stored_ids(&db, "MRN-BIG").await;
    assert_eq!(stored, ["SMALL-1"]);

    // Within the limit as Latin-1 bytes, beyond it as the UTF-8 stored:
    // refused as too large, never a write the database would refuse.
    let wide = oru("WIDE-1", "MRN-BIG", &"\u{e9}".repeat(1500))
        .replace("|P|2.5.1", "|P|2.5.1||||||8859/1");
    let latin1: Vec<u8> = wide.chars().map(|c| c as u32 as u8).collect();
    assert!(latin1.len() <= 2048 && wide.len() > 2048);
    client.send_bytes(&latin1).await;
    let answer = client.reply().await;
    assert_eq!(
        ack(&answer),
        ("AE".to_owned(), "WIDE-1".to_owned()),
        "{answer}"
    );
    let stored = stored_ids(&db, "MRN-BIG").await;
    assert_eq!(stored, ["SMALL-1"]);
}

#[tokio::test]
async fn an_unterminated_frame_is_never_stored_at_eof_or_after_the_frame_timeout() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::mllp_config(&uri, "");
    config.mllp.frame_timeout = Duration::from_millis(500);
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&uri).await;
    // The sender closes inside a frame.
    let mut client = connect(&ingest).await;
    let whole = MllpClient::frame(oru("CUT-1", "MRN-CUT", "1").as_bytes());
    client.write(&whole[..whole.len() - 2]).await;
    drop(client);
    // The sender stops inside a frame and stays connected.
    let mut stalled = connect(&ingest).await;
    let second = MllpClient::frame(oru("CUT-2", "MRN-CUT", "1").as_bytes());
    stalled.write(&second[..second.len() - 2]).await;
    assert_eq!(
        stalled.reply_within(Duration::from_secs(10)).await,
        Reply::Closed
    );
    // An idle connection is not closed by the frame timeout.
    let mut idle = connect(&ingest).await;
    assert_eq!(
        idle.reply_within(Duration::from_millis(1500)).await,
        Reply::Silent
    );
    assert_eq!(
        ack(&idle.exchange(&oru("IDLE-1", "MRN-IDLE", "1")).await).0,
        "AA"
    );
    assert_eq!(
        db.count("queued_events", doc! { "patientId": "MRN-CUT" })
            .await,
        0
    );
}

/// A sender streaming frames back to back never pauses between two: each
/// frame is timed from its own start, not from the first one left open.
#[tokio::test]
async fn frames_streamed_back_to_back_are_each_timed_from_their_own_start() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::mllp_config(&uri, "");
    config.mllp.frame_timeout = Duration::from_millis(600);
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&uri).await;
    let frames: Vec<Vec<u8>> = (1..=6)
        .map(|n| MllpClient::frame(oru(&format!("ST-{n}"), "MRN-ST", &n.to_string()).as_bytes()))
        .collect();
    let mut client = connect(&ingest).await;
    // Each write ends one frame and begins the next: at no read does the
    // connection sit between frames, for 2 s in all.
    let half = |f: &Vec<u8>| f.len() / 2;
    client.write(&frames[0][..half(&frames[0])]).await;
    for n in 0..frames.len() {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut chunk = frames[n][half(&frames[n])..].to_vec();
        if let Some(next) = frames.get(n + 1) {
            chunk.extend_from_slice(&next[..half(next)]);
        }
        client.write(&chunk).await;
    }
    for n in 1..=6 {
        match client.reply_within(Duration::from_secs(10)).await {
            Reply::Frame(answer) => assert_eq!(ack(&answer).0, "AA", "frame {n}"),
            other => panic!("frame {n}: {other:?}"),
        }
    }
    let expected: Vec<String> = (1..=6).map(|n| format!("ST-{n}")).collect();
    assert_eq!(stored_ids(&db, "MRN-ST").await, expected);
}

/// A serial sender that ends frames with 0x1C alone (no CR) waits for
/// each ACK before sending more: the frame must be answered as it is.
#[tokio::test]
async fn a_frame_ended_without_its_cr_is_answered_without_waiting_for_more() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    for n in 1..=2 {
        let framed = MllpClient::frame(oru(&format!("NOCR-{n}"), "MRN-NOCR", "1").as_bytes());
        client.write(&framed[..framed.len() - 1]).await;
        match client.reply_within(Duration::from_secs(10)).await {
            Reply::Frame(answer) => assert_eq!(ack(&answer).0, "AA"),
            other => panic!("message {n}: {other:?}"),
        }
    }
    assert_eq!(stored_ids(&db, "MRN-NOCR").await, ["NOCR-1", "NOCR-2"]);
}

#[tokio::test]
async fn latin_1_is_decoded_by_msh_18_or_by_the_listener_default() {
    let (ingest, db) = start("").await;
    let latin1 = |text: &str| -> Vec<u8> { text.chars().map(|c| c as u32 as u8).collect() };
    let mut client = connect(&ingest).await;
    let declared = oru("L1-1", "MRN-Ü1", "1")
        .replace("MOUSE^MINA", "MÜLLER^JÖRG")
        .replace("|P|2.5.1", "|P|2.5.1||||||8859/1");
    client.send_bytes(&latin1(&declared)).await;
    let answer = client.reply().await;
    assert_eq!(ack(&answer).0, "AA", "{answer}");
    let stored = db.events_of("MRN-Ü1").await;
    assert_eq!(stored.len(), 1, "the patient id is decoded too");
    assert!(
        hl7(&stored[0])
            .get_str("message")
            .unwrap()
            .contains("MÜLLER^JÖRG")
    );

    // A sender that leaves MSH-18 empty, on a listener whose default is Latin-1.
    let (latin_ingest, latin_db) = start(";charset=8859/1").await;
    let mut client = connect(&latin_ingest).await;
    let undeclared = oru("L1-2", "MRN-2", "1").replace("MOUSE^MINA", "GARÇON^ANDRÉ");
    client.send_bytes(&latin1(&undeclared)).await;
    assert_eq!(ack(&client.reply().await).0, "AA");
    let stored = latin_db.events_of("MRN-2").await;
    assert!(
        hl7(&stored[0])
            .get_str("message")
            .unwrap()
            .contains("GARÇON^ANDRÉ")
    );
    // The same bytes on a UTF-8 listener are not valid text: refused, not garbled.
    let mut client = connect(&ingest).await;
    client.send_bytes(&latin1(&undeclared)).await;
    assert_eq!(ack(&client.reply().await).0, "AE");
    assert_eq!(
        db.count("queued_events", doc! { "patientId": "MRN-2" })
            .await,
        0
    );
}

/// Some senders (Windows tools, v2 interfaces that predate v2.5's advice
/// against it) put a UTF-8 byte-order mark before the MSH.
#[tokio::test]
async fn a_byte_order_mark_before_msh_is_dropped_and_reads_the_message_as_utf_8() {
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let with_bom = |text: &str| -> Vec<u8> { [BOM, text.as_bytes()].concat() };
    // On a listener whose default is Latin-1: the mark says UTF-8.
    let (ingest, db) = start(";charset=8859/1").await;
    let mut client = connect(&ingest).await;
    let message = oru("BOM-1", "MRN-Ü3", "1").replace("MOUSE^MINA", "MÜLLER^JÖRG");
    client.send_bytes(&with_bom(&message)).await;
    let answer = client.reply().await;
    assert_eq!(
        ack(&answer),
        ("AA".to_owned(), "BOM-1".to_owned()),
        "{answer}"
    );
    let stored = db.events_of("MRN-Ü3").await;
    assert_eq!(stored.len(), 1, "the patient id is read as UTF-8 too");
    let text = hl7(&stored[0]).get_str("message").unwrap();
    assert!(text.starts_with("MSH|"), "the mark is not stored: {text:?}");
    assert!(text.contains("MÜLLER^JÖRG"), "{text:?}");

    // A batch file after a mark is read as one, every message of it as
    // UTF-8 (the mark precedes only the first).
    let batch = format!(
        "FHS|^~\\&|LabSys\rBHS|^~\\&|LabSys\r{}{}BTS|2\rFTS|1\r",
        oru("BOM-2", "MRN-B", "1"),
        oru("BOM-3", "MRN-B", "2").replace("MOUSE^MINA", "MÜLLER^JÖRG")
    );
    client.send_bytes(&with_bom(&batch)).await;
    let answer = client.reply().await;
    assert_eq!(acks(&answer).len(), 2, "{answer}");
    assert!(
        acks(&answer).iter().all(|(code, _)| code == "AA"),
        "{answer}"
    );
    assert_eq!(stored_ids(&db, "MRN-B").await, ["BOM-2", "BOM-3"]);
    let second = &db.events_of("MRN-B").await[1];
    let text = hl7(second).get_str("message").unwrap();
    assert!(text.contains("MÜLLER^JÖRG"), "{text:?}");

    // On a UTF-8 listener, the same message resent without the mark is the
    // same message: replayed, not stored twice.
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    client.send_bytes(&with_bom(&message)).await;
    assert_eq!(ack(&client.reply().await).0, "AA");
    client.send_bytes(message.as_bytes()).await;
    let answer = client.reply().await;
    assert_eq!(ack(&answer).0, "AA", "{answer}");
    assert_eq!(db.events_of("MRN-Ü3").await.len(), 1);
}

#[tokio::test]
async fn enhanced_mode_gets_commit_acks_and_none_for_ne() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    let enhanced = |id: &str, accept: &str| {
        oru(id, "MRN-E", "1").replace("|P|2.5.1", &format!("|P|2.5.1|||{accept}|NE"))
    };
    assert_eq!(
        ack(&client.exchange(&enhanced("E-1", "AL")).await),
        ("CA".to_owned(), "E-1".to_owned())
    );
    // NE: nothing comes back; the next message is read once this one is stored.
    client.send(&enhanced("E-2", "NE")).await;
    assert_eq!(
        ack(&client.exchange(&oru("E-3", "MRN-E", "1")).await),
        ("AA".to_owned(), "E-3".to_owned())
    );
    // ER: only errors are answered.
    let no_pid = "MSH|^~\\&|LabSys|NORTHLAB|||20240411070545||ORU^R01|E-4|P|2.5.1|||ER|NE\rOBR|1\r";
    assert_eq!(
        ack(&client.exchange(no_pid).await),
        ("CE".to_owned(), "E-4".to_owned())
    );
    let stored = stored_ids(&db, "MRN-E").await;
    assert_eq!(stored, ["E-1", "E-2", "E-3"]);
}

/// A frame that cannot be read is answered `AR` with what is wrong with it
/// (ERR-8), and nothing of it is stored: not HL7 at all, a segment before
/// any MSH, a batch whose trailer miscounts its messages.
#[tokio::test]
async fn an_unreadable_frame_is_refused_with_its_reason_and_nothing_stored() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    let miscounted = format!(
        "BHS|^~\\&|LabSys|NORTHLAB\r{}{}BTS|3\r",
        oru("U-1", "MRN-U", "1"),
        oru("U-2", "MRN-U", "2")
    );
    for (frame, reason) in [
        (
            "garbage",
            "not an HL7 message: a gar segment comes before any MSH",
        ),
        (
            "\u{1}\u{2}\u{7f}|x",
            "not an HL7 message: a ??? segment comes before any MSH",
        ),
        (
            miscounted.as_str(),
            "the batch cannot be read: BTS-1 counts 3 messages, the batch has 2",
        ),
    ] {
        let answer = client.exchange(frame).await;
        assert_eq!(ack(&answer).0, "AR", "{answer:?}");
        assert!(answer.contains(reason), "{reason:?} in {answer:?}");
    }
    assert!(stored_ids(&db, "MRN-U").await.is_empty());
}

#[tokio::test]
async fn a_batch_is_stored_in_order_and_answered_with_one_batch_of_acks() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    let no_pid = "MSH|^~\\&|LabSys|NORTHLAB|||20240411070545||ORU^R01|B-2|P|2.5.1\rOBR|1\r";
    let batch = format!(
        "BHS|^~\\&|LabSys|NORTHLAB\r{}{}{}BTS|3\r",
        oru("B-1", "MRN-B", "1"),
        no_pid,
        oru("B-3", "MRN-B", "3")
    );
    let answer = client.exchange(&batch).await;
    assert!(answer.starts_with("BHS|"), "{answer:?}");
    assert!(answer.ends_with("BTS|3\r"), "{answer:?}");
    assert_eq!(
        acks(&answer),
        [
            ("AA".to_owned(), "B-1".to_owned()),
            ("AE".to_owned(), "B-2".to_owned()),
            ("AA".to_owned(), "B-3".to_owned())
        ]
    );
    let stored = stored_ids(&db, "MRN-B").await;
    assert_eq!(
        stored,
        ["B-1", "B-3"],
        "one bad message does not lose the others"
    );
}

#[tokio::test]
async fn with_the_database_frozen_or_its_insert_held_no_ack_is_sent_and_the_connection_closes_then_a_resend_is_stored_once()
 {
    let proxy = FaultProxy::start_for_shared().await;
    let database = format!("t_{}", uuid::Uuid::new_v4().simple());
    let uri = proxy.uri(&database);
    let mut config = InProcessIngest::mllp_config(&uri, "");
    config.mongo.timeout = Duration::from_millis(500);
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&format!("{}/{database}", crate::support::shared_mongo())).await;
    let mut client = connect(&ingest).await;
    assert_eq!(
        ack(&client.exchange(&oru("F-1", "MRN-F", "1")).await).0,
        "AA"
    );

    proxy.freeze(true);
    client.send(&oru("F-2", "MRN-F", "2")).await;
    let reply = client.reply_within(Duration::from_secs(30)).await;
    assert_eq!(
        reply,
        Reply::Closed,
        "no ACK for a write the store did not confirm"
    );
    proxy.freeze(false);

    // The sender reconnects and resends what was not acknowledged.
    let mut client = connect(&ingest).await;
    assert_eq!(
        ack(&client.exchange(&oru("F-2", "MRN-F", "2")).await).0,
        "AA"
    );
    let stored = stored_ids(&db, "MRN-F").await;
    assert_eq!(stored, ["F-1", "F-2"], "stored once, in order");

    // Only the insert held (the reads before it answered): its outcome is
    // unknown when the store gives up, so still no ACK.
    let held = proxy.on_next("insert", "queued_events", Fault::HoldRequest, 1);
    client.send(&oru("F-3", "MRN-F", "3")).await;
    let reply = client.reply_within(Duration::from_secs(30)).await;
    assert_eq!(proxy.hits(held), 1, "the insert was sent and held");
    assert_eq!(
        reply,
        Reply::Closed,
        "no ACK for an insert whose outcome is unknown"
    );
    // Let it through (it may land late), then the sender resends.
    proxy.release();
    let mut client = connect(&ingest).await;
    assert_eq!(
        ack(&client.exchange(&oru("F-3", "MRN-F", "3")).await).0,
        "AA"
    );
    let stored = stored_ids(&db, "MRN-F").await;
    assert_eq!(stored, ["F-1", "F-2", "F-3"], "stored once, in order");
}

#[tokio::test]
async fn connections_from_outside_the_allowlist_are_closed_unanswered() {
    let (ingest, db) = start(";allow=10.9.0.0/16").await;
    let mut client = connect(&ingest).await;
    client.send(&oru("DENY-1", "MRN-D", "1")).await;
    assert_eq!(
        client.reply_within(Duration::from_secs(10)).await,
        Reply::Closed
    );
    assert_eq!(db.count("queued_events", doc! {}).await, 0);
    let (open, _) = start(";allow=127.0.0.0/8").await;
    assert_eq!(
        ack(&connect(&open)
            .await
            .exchange(&oru("OK-1", "MRN-D", "1"))
            .await)
        .0,
        "AA"
    );
}

#[tokio::test]
async fn a_listener_at_its_connection_limit_closes_new_connections_unanswered() {
    let uri = fresh_database_uri();
    let mut config = InProcessIngest::mllp_config(&uri, "");
    config.mllp.max_connections = 2;
    let ingest = InProcessIngest::start_with(config).await;
    let db = Db::connect(&uri).await;
    let mut first = connect(&ingest).await;
    let mut second = connect(&ingest).await;
    for (client, id) in [(&mut first, "CAP-1"), (&mut second, "CAP-2")] {
        assert_eq!(
            ack(&client.exchange(&oru(id, "MRN-CAP", "1")).await).0,
            "AA"
        );
    }
    let mut third = connect(&ingest).await;
    third.send(&oru("CAP-3", "MRN-CAP", "1")).await;
    assert_eq!(
        third.reply_within(Duration::from_secs(10)).await,
        Reply::Closed
    );
    assert_eq!(stored_ids(&db, "MRN-CAP").await, ["CAP-1", "CAP-2"]);
    // A connection closed frees its place.
    drop(first);
    crate::support::wait_until(Duration::from_secs(10), "a place freed", || async {
        let mut next = connect(&ingest).await;
        next.send(&oru("CAP-4", "MRN-CAP", "1")).await;
        matches!(next.reply_within(Duration::from_secs(5)).await, Reply::Frame(answer) if ack(&answer).0 == "AA")
    })
    .await;
    assert_eq!(
        stored_ids(&db, "MRN-CAP").await,
        ["CAP-1", "CAP-2", "CAP-4"]
    );
}

#[tokio::test]
async fn a_listeners_metrics_count_its_traffic_by_client_and_port() {
    use crate::observability::sample;
    let (ingest, _db) = start("").await;
    let metrics = ingest.metrics_url.clone().expect("a metrics listener");
    let port = ingest.mllp_address().port().to_string();
    let labels = [("client", crate::support::CLIENT), ("port", port.as_str())];
    let mut client = connect(&ingest).await;
    // Noise, a message, its resend, the same id with other content, not HL7.
    client.write(b"noise").await;
    assert_eq!(
        ack(&client.exchange(&oru("MET-1", "MRN-MET", "1")).await).0,
        "AA"
    );
    assert_eq!(
        ack(&client.exchange(&oru("MET-1", "MRN-MET", "1")).await).0,
        "AA"
    );
    assert_eq!(
        ack(&client.exchange(&oru("MET-1", "MRN-MET", "2")).await).0,
        "AA"
    );
    assert_eq!(ack(&client.exchange("not an HL7 message").await).0, "AR");

    let text = crate::support::scrape(&metrics).await;
    let value = |name: &str, extra: &[(&str, &str)]| {
        let mut all = labels.to_vec();
        all.extend_from_slice(extra);
        sample(&text, name, &all).unwrap_or(0.0)
    };
    assert_eq!(value("mllp_connections_total", &[]), 1.0);
    assert_eq!(value("mllp_connections_open", &[]), 1.0);
    assert_eq!(value("mllp_frames_total", &[("kind", "message")]), 4.0);
    assert_eq!(value("mllp_discarded_bytes_total", &[]), 5.0);
    assert_eq!(value("mllp_messages_stored_total", &[]), 2.0);
    assert_eq!(value("mllp_resends_total", &[]), 1.0);
    assert_eq!(value("mllp_reused_control_ids_total", &[]), 1.0);
    assert_eq!(value("mllp_messages_refused_total", &[]), 1.0);
    assert_eq!(value("mllp_acks_total", &[("code", "AA")]), 3.0);
    assert_eq!(value("mllp_acks_total", &[("code", "AR")]), 1.0);
    assert!(value("mllp_last_message_timestamp_seconds", &[]) > 1.7e9);
    assert!(
        !text.contains("MRN-MET") && !text.contains("MET-1"),
        "no message content in a label"
    );
}

#[tokio::test]
async fn an_http_client_naming_the_same_mrn_shares_the_patients_sequence() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    assert_eq!(
        ack(&client.exchange(&oru("S-1", "MRN-SHARED", "1")).await).0,
        "AA"
    );
    let answer = crate::support::post_event(
        &crate::support::client(),
        &ingest.url,
        &crate::support::event_body("MRN-SHARED", 2),
        None,
    )
    .await;
    assert_eq!(answer.status, reqwest::StatusCode::ACCEPTED);
    assert_eq!(
        ack(&client.exchange(&oru("S-3", "MRN-SHARED", "3")).await).0,
        "AA"
    );
    let seqs: Vec<i64> = all_events(&db)
        .await
        .iter()
        .map(|e| e.get_i64("seq").unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
}

/// HL7's ST type makes trailing blanks optional, so a sender that pads its
/// fixed-width MRN names the same patient as one that does not: one
/// sequence, not two patients processed side by side.
#[tokio::test]
async fn trailing_blanks_of_an_mrn_are_not_part_of_the_patient_id() {
    let (ingest, db) = start("").await;
    let mut client = connect(&ingest).await;
    for (id, mrn) in [("T-1", "MRN-T  "), ("T-2", "MRN-T"), ("T-3", "MRN-T ")] {
        let answer = client.exchange(&oru(id, mrn, "1")).await;
        assert_eq!(ack(&answer), ("AA".to_owned(), id.to_owned()), "{answer}");
    }
    assert_eq!(stored_ids(&db, "MRN-T").await, ["T-1", "T-2", "T-3"]);
    let patients: Vec<String> = all_events(&db)
        .await
        .iter()
        .map(|e| e.get_str("patientId").unwrap().to_owned())
        .collect();
    assert_eq!(patients, ["MRN-T"; 3]);
    // Blanks only are no id at all.
    let answer = client.exchange(&oru("T-4", "   ", "1")).await;
    assert_eq!(ack(&answer).0, "AE", "{answer}");
    assert_eq!(all_events(&db).await.len(), 3);
}

/// The sender's loop after a crash: everything not acknowledged is sent
/// again, in order, on a new connection.
#[tokio::test]
async fn ingest_killed_mid_stream_while_the_sender_resends_what_was_not_acked_stores_each_once_in_order()
 {
    use crate::support::{Service, free_port, ingest_env};
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let port = free_port();
    let mut env = ingest_env(&uri, "http://127.0.0.1:9");
    env.push((
        "MLLP_LISTENERS",
        format!("{}@127.0.0.1:{port}", crate::support::CLIENT),
    ));
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let patients = ["MRN-K1", "MRN-K2", "MRN-K3"];
    let messages: Vec<(String, &str, String)> = (0..45)
        .map(|n| {
            let id = format!("K-{n:03}");
            let patient = patients[n % 3];
            let text = oru(&id, patient, &n.to_string());
            (id, patient, text)
        })
        .collect();

    let mut ingest = Service::start("ingest", &env).await;
    let mut acked: Vec<String> = Vec::new();
    let mut next = 0;
    for round in 0..3 {
        let mut client = MllpClient::connect(address).await;
        // Acknowledged one by one for a while ...
        let stop_at = (next + 10).min(messages.len());
        while next < stop_at {
            let answer = client.exchange(&messages[next].2).await;
            assert_eq!(ack(&answer), ("AA".to_owned(), messages[next].0.clone()));
            acked.push(messages[next].0.clone());
            next += 1;
        }
        if round == 2 {
            // ... and the rest pipelined, with the service left running.
            let mut bytes = Vec::new();
            for message in &messages[next..] {
                bytes.extend(MllpClient::frame(message.2.as_bytes()));
            }
            client.write(&bytes).await;
            while next < messages.len() {
                assert_eq!(ack(&client.reply().await).1, messages[next].0);
                acked.push(messages[next].0.clone());
                next += 1;
            }
            break;
        }
        // ... then five pipelined, and the process killed while they are
        // being stored: some may be stored, none of them is acknowledged.
        let mut bytes = Vec::new();
        for message in &messages[next..next + 5] {
            bytes.extend(MllpClient::frame(message.2.as_bytes()));
        }
        client.write(&bytes).await;
        tokio::time::sleep(Duration::from_millis(15 * round as u64)).await;
        ingest.kill9();
        // What was acknowledged before the kill counts as acknowledged.
        while let Reply::Frame(answer) = client.reply_within(Duration::from_millis(200)).await {
            let (code, id) = ack(&answer);
            assert_eq!(
                (code.as_str(), id.as_str()),
                ("AA", messages[next].0.as_str())
            );
            acked.push(id);
            next += 1;
        }
        ingest = Service::start("ingest", &env).await;
    }
    assert_eq!(acked.len(), messages.len());

    for patient in patients {
        let stored = stored_ids(&db, patient).await;
        let sent: Vec<String> = messages
            .iter()
            .filter(|(_, p, _)| *p == patient)
            .map(|(id, _, _)| id.clone())
            .collect();
        assert_eq!(
            stored, sent,
            "{patient}: every message once, in the order sent"
        );
    }
    drop(ingest);
}

#[tokio::test]
async fn hl7_events_go_out_over_mllp_in_order_one_at_a_time_retried_after_a_nak_or_a_wrong_ack() {
    use crate::support::mllp::{Misbehave, Receiver};
    use crate::support::{Service, processor_env, wait_until};
    let uri = fresh_database_uri();
    let db = Db::connect(&uri).await;
    let receiver = Receiver::start(Duration::from_millis(40)).await;
    let mut env = processor_env(&uri, 10, 20);
    env.push(("DELIVERY_MLLP", receiver.address.to_string()));
    env.push(("DELIVERY_MLLP_RECEIVING_APPLICATION", "EHR".to_owned()));
    env.push(("DELIVERY_MLLP_TIMEOUT_MS", "5000".to_owned()));
    let processor = Service::start("processor", &env).await;
    let mut config = InProcessIngest::mllp_config(&uri, "");
    config.processor_url = processor.url();
    let ingest = InProcessIngest::start_with(config).await;

    receiver.misbehave_once("D-A-2", Misbehave::Nak);
    receiver.misbehave_once("D-B-3", Misbehave::WrongControlId);
    let mut client = connect(&ingest).await;
    let mut sent: Vec<(String, String)> = Vec::new();
    for n in 1..=4 {
        for patient in ["A", "B", "C"] {
            let id = format!("D-{patient}-{n}");
            // Enhanced mode asked by the sender: cleared on the way out.
            let message = oru(&id, &format!("MRN-D{patient}"), &n.to_string())
                .replace("|P|2.5.1", "|P|2.5.1|||AL|NE");
            assert_eq!(ack(&client.exchange(&message).await).0, "CA");
            sent.push((format!("MRN-D{patient}"), id));
        }
    }
    wait_until(Duration::from_secs(60), "all 12 processed", || async {
        db.count("processed_events", doc! {}).await == 12
    })
    .await;
    assert_eq!(
        db.count("processed_events", doc! { "result.status": "success" })
            .await,
        12
    );

    let received = receiver.received();
    for patient in ["MRN-DA", "MRN-DB", "MRN-DC"] {
        let mine: Vec<&crate::support::mllp::Received> =
            received.iter().filter(|r| r.patient == patient).collect();
        // One at a time: each delivery ends before the next starts.
        for pair in mine.windows(2) {
            assert!(
                pair[0].ended <= pair[1].started,
                "{patient}: two deliveries open at once"
            );
        }
        // In order, a failed one retried in place before the next.
        let mut order: Vec<String> = mine.iter().map(|r| r.control_id.clone()).collect();
        order.dedup();
        let expected: Vec<String> = sent
            .iter()
            .filter(|(p, _)| p == patient)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(order, expected, "{patient}");
        let accepted: Vec<String> = mine
            .iter()
            .filter(|r| r.answer == "AA")
            .map(|r| r.control_id.clone())
            .collect();
        assert_eq!(accepted, expected, "{patient}: each accepted once");
    }
    let retried = |id: &str| received.iter().filter(|r| r.control_id == id).count();
    assert_eq!(retried("D-A-2"), 2, "the NAKed message was sent again");
    assert_eq!(
        retried("D-B-3"),
        2,
        "an ACK for another message is not taken"
    );
    for r in &received {
        assert_eq!(r.receiving_application, "EHR", "MSH-5 set to the receiver");
        assert_eq!(r.accept_ack_type, "", "MSH-15 cleared: original mode");
        let token: i64 = r
            .fencing_token
            .as_deref()
            .expect("a ZFT segment")
            .parse()
            .unwrap();
        assert!(token >= 1, "the fencing token is the lease epoch");
    }
}

/// Certificates for a mutual TLS listener: a CA, the listener's certificate
/// for 127.0.0.1, a client certificate the CA signed, and one it did not.
struct MutualTls {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client: (String, String),
    stranger: (String, String),
}

fn mutual_tls() -> MutualTls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = crate::support::repo_root()
        .join("target/test-tls")
        .join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let authority = || {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca, ca_key) = authority();
    let (other_ca, other_key) = authority();
    let leaf = |names: Vec<String>, by: &rcgen::Certificate, by_key: &KeyPair| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, by, by_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key) = leaf(vec!["127.0.0.1".to_owned()], &ca, &ca_key);
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, server_pem).unwrap();
    std::fs::write(&paths.2, server_key).unwrap();
    MutualTls {
        ca: paths.0,
        cert: paths.1,
        key: paths.2,
        client: leaf(vec!["lab-a".to_owned()], &ca, &ca_key),
        stranger: leaf(vec!["lab-x".to_owned()], &other_ca, &other_key),
    }
}

/// A TLS session to the listener, presenting `identity` (PEM cert, key) if given.
async fn tls_connect(
    address: std::net::SocketAddr,
    ca: &std::path::Path,
    identity: Option<&(String, String)>,
) -> std::io::Result<MllpClient> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let tcp = tokio::net::TcpStream::connect(address).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await?;
    Ok(MllpClient::over(Box::new(tls)))
}

#[tokio::test]
async fn a_mutual_tls_listener_takes_messages_only_from_clients_its_ca_signed() {
    let tls = mutual_tls();
    let (ingest, db) = start(&format!(
        ";tls_cert={};tls_key={};tls_client_ca={}",
        tls.cert.display(),
        tls.key.display(),
        tls.ca.display()
    ))
    .await;
    let address = ingest.mllp_address();
    let mut trusted = tls_connect(address, &tls.ca, Some(&tls.client))
        .await
        .unwrap();
    assert_eq!(
        ack(&trusted.exchange(&oru("TLS-1", "MRN-TLS", "1")).await).0,
        "AA"
    );

    for identity in [None, Some(&tls.stranger)] {
        // TLS 1.3 reports a refused client certificate after the handshake:
        // the session then ends before any answer.
        if let Ok(mut client) = tls_connect(address, &tls.ca, identity).await {
            let _ = client.try_send(&oru("TLS-2", "MRN-TLS", "2")).await;
            assert_ne!(
                std::mem::discriminant(&client.reply_within(Duration::from_secs(10)).await),
                std::mem::discriminant(&Reply::Frame(String::new())),
                "a client without a certificate the CA signed gets no answer"
            );
        }
    }
    // Plain TCP to a TLS listener is not MLLP to it.
    let mut plain = connect(&ingest).await;
    let _ = plain.try_send(&oru("TLS-3", "MRN-TLS", "3")).await;
    assert_ne!(
        std::mem::discriminant(&plain.reply_within(Duration::from_secs(10)).await),
        std::mem::discriminant(&Reply::Frame(String::new()))
    );
    let stored = stored_ids(&db, "MRN-TLS").await;
    assert_eq!(stored, ["TLS-1"]);
}
