//! The HL7 core end to end: sample messages through reading, mapping and
//! ACKs, as the listener will drive them; and random input through all of
//! it, which must never panic.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::*;

const ADT_A01: &str = include_str!("fixtures/adt_a01.hl7");
const ORU_R01: &str = include_str!("fixtures/oru_r01.hl7");
const BATCH: &str = include_str!("fixtures/batch.hl7");

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-05-06T07:08:09.010Z")
        .unwrap()
        .to_utc()
}

fn read_with(bytes: &[u8], default_charset: Charset) -> Result<Hl7Message, ReadError> {
    Hl7Message::read(bytes, &ReadOptions { default_charset })
}

fn read(text: &str) -> Hl7Message {
    read_with(text.as_bytes(), Charset::Utf8).unwrap()
}

fn map(text: &str) -> Result<MappedMessage, Refusal> {
    map_message(&read(text), &MappingConfig::default())
}

fn map_with(text: &str, config: &MappingConfig) -> Result<MappedMessage, Refusal> {
    map_message(&read(text), config)
}

fn hl7_data(mapped: &MappedMessage) -> &serde_json::Map<String, Value> {
    mapped.event.data.as_map()["hl7"].as_object().unwrap()
}

fn patient(mapped: &MappedMessage) -> &str {
    mapped.event.patient_id.as_str()
}

/// A minimal ADT message around a PID-3 value.
fn adt_with_pid_3(pid_3: &str) -> String {
    format!(
        "MSH|^~\\&|APP|FAC|||20240101120000||ADT^A08|C1|P|2.5\rEVN|A08|20240101115900\rPID|1||{pid_3}||DOE^JANE\r"
    )
}

fn ack_for(message: &Hl7Message, outcome: &Outcome) -> Ack {
    build_ack(message.header(), outcome, "ACK0001", now())
}

// --- Mapping the samples ---------------------------------------------------

#[test]
fn adt_a01_maps_to_the_mr_patient_its_type_and_evn_2() {
    let mapped = map(ADT_A01).unwrap();
    assert_eq!(patient(&mapped), "10006579");
    assert_eq!(mapped.event.event_type.as_str(), "ADT^A01");
    assert_eq!(mapped.event.ts.as_str(), "2024-01-10T04:55:02.000Z");
    let data = hl7_data(&mapped);
    assert_eq!(data["controlId"], "MSG599102");
    assert_eq!(data["sendingApplication"], "AdmitApp");
    assert_eq!(data["sendingFacility"], "GENHOSP");
    assert_eq!(data["messageType"], "ADT^A01^ADT_A01");
    assert_eq!(data["version"], "2.3");
    assert_eq!(data["processingId"], "P");
    assert_eq!(data["charset"], "UNICODE UTF-8");
    assert_eq!(data["eventTimeField"], "EVN-2");
    assert_eq!(data["patientIdAuthority"], "GENHOSP");
    assert_eq!(data["patientIdType"], "MR");
    assert_eq!(data["message"], ADT_A01.replace('\n', "\r"));
    assert!(!data.contains_key("mergedPatientId"));
    assert_eq!(
        mapped.key,
        MessageKey {
            sending_application: "AdmitApp".into(),
            sending_facility: "GENHOSP".into(),
            control_id: "MSG599102".into(),
        }
    );
    assert_eq!(mapped.fingerprint.len(), 64);
}

#[test]
fn zone_less_times_are_read_in_the_listener_zone() {
    let config = MappingConfig {
        time_zone: "America/Chicago".parse().unwrap(),
        ..MappingConfig::default()
    };
    let mapped = map_with(ADT_A01, &config).unwrap();
    assert_eq!(mapped.event.ts.as_str(), "2024-01-10T10:55:02.000Z");
    // An offset in the value wins over the zone.
    let with_offset = ADT_A01.replace("EVN|A01|20240110045502", "EVN|A01|20240110045502+0100");
    let mapped = map_with(&with_offset, &config).unwrap();
    assert_eq!(mapped.event.ts.as_str(), "2024-01-10T03:55:02.000Z");
}

#[test]
fn oru_r01_maps_with_obr_7_and_the_assigning_authority_filter() {
    let mapped = map(ORU_R01).unwrap();
    assert_eq!(patient(&mapped), "12345");
    assert_eq!(mapped.event.event_type.as_str(), "ORU^R01");
    assert_eq!(mapped.event.ts.as_str(), "2024-04-10T16:02:27.000Z");
    assert_eq!(hl7_data(&mapped)["eventTimeField"], "OBR-7");
    // CX.4 is an HD: its first subcomponent is compared.
    let config = MappingConfig {
        assigning_authority: Some("MIE".into()),
        ..MappingConfig::default()
    };
    let mapped = map_with(ORU_R01, &config).unwrap();
    assert_eq!(patient(&mapped), "12345");
    assert_eq!(hl7_data(&mapped)["patientIdAuthority"], "MIE");
}

#[test]
fn a_pid_3_without_types_gives_its_first_repetition() {
    // After python-hl7's ORU sample: PID-3 is a bare number, v2.4.
    let message = "MSH|^~\\&|GHH LAB|ELAB-3|GHH OE|BLDG4|200202150930||ORU^R01|CNTRL-3456|P|2.4\r\
        PID|||555-44-4444||EVERYWOMAN^EVE^E^^^^L|JONES|19620320|F\r\
        OBR|1|845439^GHH OE|1045813^GHH LAB|1554-5^GLUCOSE|||200202150730\r\
        OBX|1|SN|1554-5^GLUCOSE^POST 12H CFST:MCNC:PT:SER/PLAS:QN||^182|mg/dl|70_105|H|||F\r";
    let mapped = map(message).unwrap();
    assert_eq!(patient(&mapped), "555-44-4444");
    assert_eq!(mapped.event.ts.as_str(), "2002-02-15T07:30:00.000Z");
    assert!(!hl7_data(&mapped).contains_key("patientIdType"));
}

#[test]
fn the_mr_repetition_of_pid_3_is_chosen() {
    let pid_3 = "E4431^^^EMPI^PI~100200^^^WEST^MR~300400^^^EAST^MR";
    assert_eq!(patient(&map(&adt_with_pid_3(pid_3)).unwrap()), "100200");
    let east = MappingConfig {
        assigning_authority: Some("EAST".into()),
        ..MappingConfig::default()
    };
    assert_eq!(
        patient(&map_with(&adt_with_pid_3(pid_3), &east).unwrap()),
        "300400"
    );
    // No MR of the configured authority: the first repetition, as specified.
    let north = MappingConfig {
        assigning_authority: Some("NORTH".into()),
        ..MappingConfig::default()
    };
    assert_eq!(
        patient(&map_with(&adt_with_pid_3(pid_3), &north).unwrap()),
        "E4431"
    );
    // The chosen repetition's CX.1 is empty: refused, naming it.
    let refusal = map_with(&adt_with_pid_3("E4431^^^EMPI^PI~^^^EAST^MR"), &east).unwrap_err();
    assert_eq!(
        refusal,
        Refusal::MissingField {
            location: Location::field("PID", 3)
                .with_repetition(2)
                .with_component(1)
        }
    );
    assert_eq!(refusal.to_string(), "PID-3(2).1 is required");
}

#[test]
fn lf_and_crlf_segment_ends_map_like_cr() {
    let cr = map(&ADT_A01.replace('\n', "\r")).unwrap();
    let lf = map(ADT_A01).unwrap();
    let crlf = map(&ADT_A01.replace('\n', "\r\n")).unwrap();
    assert_eq!(lf, cr);
    assert_eq!(crlf, cr);
}

#[test]
fn latin1_is_read_when_msh_18_says_so_or_the_listener_defaults_to_it() {
    let latin1 = |msh_18: &str| -> Vec<u8> {
        [
            &b"MSH|^~\\&|APP|FAC|||20240101120000||ADT^A08|C1|P|2.5||||||"[..],
            msh_18.as_bytes(),
            b"\rEVN|A08|20240101115900\rPID|1||K\xf6LN-42^^^^MR||M\xfcLLER^J\xfcRGEN\r",
        ]
        .concat()
    };
    let labelled = read_with(&latin1("8859/1"), Charset::Utf8).unwrap();
    let mapped = map_message(&labelled, &MappingConfig::default()).unwrap();
    assert_eq!(patient(&mapped), "KöLN-42");
    assert!(
        hl7_data(&mapped)["message"]
            .as_str()
            .unwrap()
            .contains("MüLLER^JüRGEN")
    );
    assert_eq!(hl7_data(&mapped)["charset"], "8859/1");
    // The ACK goes back in Latin-1, saying so.
    let ack = ack_for(&labelled, &Outcome::Accepted);
    assert!(
        ack.text().contains("|P|2.5||||||8859/1\r"),
        "{}",
        ack.text()
    );

    // Without MSH-18 the listener's default decides.
    let unlabelled = read_with(&latin1(""), Charset::Latin1).unwrap();
    let mapped = map_message(&unlabelled, &MappingConfig::default()).unwrap();
    assert_eq!(patient(&mapped), "KöLN-42");
    assert_eq!(hl7_data(&mapped)["charset"], "8859/1");

    // A UTF-8 listener cannot read it: refused with the header, answered AE.
    let Err(ReadError::Refused { header, refusal }) = read_with(&latin1(""), Charset::Utf8) else {
        panic!("Latin-1 read as UTF-8");
    };
    assert_eq!(refusal.location().unwrap().to_string(), "MSH-18");
    let ack = build_ack(&header, &Outcome::refused(refusal), "A1", now());
    assert_eq!(ack.code(), AckCode::ApplicationError);
    assert!(ack.text().contains("\rMSA|AE|C1\r"), "{}", ack.text());
}

#[test]
fn escapes_in_cx_1_are_decoded() {
    let mapped = map(&adt_with_pid_3(r"12\F\34\S\5\T\6\E\7^^^^MR")).unwrap();
    assert_eq!(patient(&mapped), r"12|34^5&6\7");
    // A decoded control character breaks the patientId rules: 102 on PID-3.
    let refusal = map(&adt_with_pid_3(r"12\X0D\3^^^^MR")).unwrap_err();
    assert_eq!(refusal.code(), ErrorCode::DataTypeError);
    assert_eq!(refusal.location().unwrap().to_string(), "PID-3.1");
    assert!(
        refusal.to_string().contains("control characters"),
        "{refusal}"
    );
}

// --- Refusals --------------------------------------------------------------

#[test]
fn a_message_without_pid_is_refused_naming_pid_3() {
    let refusal = map("MSH|^~\\&|APP|FAC|||20240101120000||ADT^A08|C1|P|2.3\rEVN|A08|20240101\r")
        .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::MissingField {
            location: Location::field("PID", 3)
        }
    );
    assert_eq!(refusal.code().code(), 101);
}

#[test]
fn an_empty_cx_1_is_a_missing_pid_3() {
    for pid_3 in ["", "^^^GENHOSP^MR", "\"\"^^^GENHOSP^MR"] {
        let refusal = map(&adt_with_pid_3(pid_3)).unwrap_err();
        assert_eq!(refusal.code(), ErrorCode::RequiredFieldMissing, "{pid_3}");
        let location = refusal.location().unwrap();
        assert_eq!(
            (location.segment.as_str(), location.field),
            ("PID", Some(3))
        );
    }
}

#[test]
fn an_a17_swap_with_two_patients_is_refused() {
    let message = "MSH|^~\\&|APP|FAC|||20240101120000||ADT^A17|C1|P|2.5\r\
        EVN|A17|20240101115900\r\
        PID|1||111^^^^MR||ONE^A\rPV1|1|I|W1^1\r\
        PID|2||222^^^^MR||TWO^B\rPV1|1|I|W2^2\r";
    let refusal = map(message).unwrap_err();
    assert_eq!(refusal, Refusal::SeveralPatients { pid_segments: 2 });
    assert_eq!(refusal.location().unwrap().to_string(), "PID[2]");
    assert_eq!(refusal.severity(), Severity::Error);
}

#[test]
fn a_merge_is_the_surviving_patients_event() {
    let message = "MSH|^~\\&|APP|FAC|||20240101120000||ADT^A40^ADT_A39|C1|P|2.5\r\
        EVN|A40|20240101115900\r\
        PID|1||1001^^^H^MR||KEPT^NAME\r\
        MRG|2002^^^H^MR\r";
    let mapped = map(message).unwrap();
    assert_eq!(patient(&mapped), "1001");
    assert_eq!(mapped.event.event_type.as_str(), "ADT^A40");
    assert_eq!(hl7_data(&mapped)["mergedPatientId"], "2002");
}

#[test]
fn unsupported_versions_processing_ids_and_types_are_rejections() {
    let base = adt_with_pid_3("1^^^^MR");
    for (from, to, code) in [
        ("|P|2.5", "|P|2.9", ErrorCode::UnsupportedVersionId),
        ("|P|2.5", "|P|3.0", ErrorCode::UnsupportedVersionId),
        ("|P|2.5", "|T|2.5", ErrorCode::UnsupportedProcessingId),
        ("|P|2.5", "|D|2.5", ErrorCode::UnsupportedProcessingId),
        ("ADT^A08", "ACK^A08", ErrorCode::UnsupportedMessageType),
    ] {
        let refusal = map(&base.replace(from, to)).unwrap_err();
        assert_eq!(refusal.code(), code, "{to}");
        assert_eq!(refusal.severity(), Severity::Reject, "{to}");
        let ack = ack_for(&read(&base.replace(from, to)), &Outcome::refused(refusal));
        assert_eq!(ack.code(), AckCode::ApplicationReject);
    }
    for version in ["2.1", "2.3.1", "2.5.1", "2.8", "2.8.2"] {
        assert!(version_supported(version), "{version}");
        assert!(map(&base.replace("|P|2.5", &format!("|P|{version}"))).is_ok());
    }
    for version in [
        "2", "2.0", "2.9", "2.10", "2.05", "2.+5", "2.5.", "2.5.+1", "2.5.1.1", "v2.5",
    ] {
        assert!(!version_supported(version), "{version}");
    }
    // The listener may accept training messages, and only some types.
    let training = MappingConfig {
        processing_ids: vec!["P".into(), "T".into()],
        message_types: Some(vec!["ADT^A08".into(), "ORU".into()]),
        ..MappingConfig::default()
    };
    assert!(map_with(&base.replace("|P|2.5", "|T|2.5"), &training).is_ok());
    assert!(map_with(ORU_R01, &training).is_ok());
    assert_eq!(
        map_with(ADT_A01, &training).unwrap_err().code(),
        ErrorCode::UnsupportedMessageType
    );
    // Missing header fields are errors naming them.
    let refusal = map(&base.replace("|C1|", "||")).unwrap_err();
    assert_eq!(refusal.location().unwrap().to_string(), "MSH-10");
}

#[test]
fn event_times_fall_back_to_msh_7_and_bad_ones_are_named() {
    let no_evn = "MSH|^~\\&|APP|FAC|||20240101120000||ADT^A08|C1|P|2.5\rPID|1||1^^^^MR\r";
    let mapped = map(no_evn).unwrap();
    assert_eq!(mapped.event.ts.as_str(), "2024-01-01T12:00:00.000Z");
    assert_eq!(hl7_data(&mapped)["eventTimeField"], "MSH-7");
    let refusal =
        map(&adt_with_pid_3("1^^^^MR").replace("EVN|A08|20240101115900", "EVN|A08|2024-01-01"))
            .unwrap_err();
    assert_eq!(refusal.code(), ErrorCode::DataTypeError);
    assert_eq!(refusal.location().unwrap().to_string(), "EVN-2");
    let refusal = map(&no_evn.replace("|20240101120000|", "||")).unwrap_err();
    assert_eq!(refusal.to_string(), "MSH-7 is required");
}

// --- ACKs ------------------------------------------------------------------

#[test]
fn an_ack_swaps_the_addresses_and_echoes_the_control_id() {
    let message = read(ADT_A01);
    let ack = ack_for(&message, &Outcome::Accepted);
    assert_eq!(ack.code(), AckCode::ApplicationAccept);
    assert_eq!(
        ack.text(),
        "MSH|^~\\&|EventSvc|EVSVC|AdmitApp|GENHOSP|20240506070809.010+0000||ACK^A01^ACK|ACK0001|P|2.3\r\
         MSA|AA|MSG599102\r"
    );
    assert_eq!(ack.to_bytes(), ack.text().as_bytes());
}

#[test]
fn an_ack_uses_the_senders_delimiters() {
    let message = read(
        "MSH*:~$&#*APP:1.2:ISO*FAC*RAPP*RFAC*20240101120000**ADT:A01*C$F$1*P*2.7\rPID*1**1:::H:MR\r",
    );
    let ack = ack_for(&message, &Outcome::Accepted);
    assert_eq!(
        ack.text(),
        "MSH*:~$&#*RAPP*RFAC*APP:1.2:ISO*FAC*20240506070809.010+0000**ACK:A01:ACK*ACK0001*P*2.7\r\
         MSA*AA*C$F$1\r"
    );
    let received = parse_ack(&ack.to_bytes(), &ReadOptions::default()).unwrap();
    assert_eq!(received.control_id, "C*1");
}

#[test]
fn error_acks_carry_err_in_the_form_of_the_version() {
    // v2.3: ELD in ERR-1, the text in MSA-3.
    let message = read("MSH|^~\\&|APP|FAC|||20240101120000||ADT^A08|C1|P|2.3\rEVN|A08|2024\r");
    let refusal = map_message(&message, &MappingConfig::default()).unwrap_err();
    let ack = ack_for(&message, &Outcome::refused(refusal));
    assert_eq!(
        ack.text(),
        "MSH|^~\\&|||APP|FAC|20240506070809.010+0000||ACK^A08^ACK|ACK0001|P|2.3\r\
         MSA|AE|C1|PID-3 is required\r\
         ERR|PID^1^3^101&Required field missing&HL70357\r"
    );
    // v2.5: ERL in ERR-2, CWE in ERR-3, severity, the text in ERR-8.
    let message = read(&adt_with_pid_3("^^^^MR"));
    let refusal = map_message(&message, &MappingConfig::default()).unwrap_err();
    let ack = ack_for(&message, &Outcome::refused(refusal));
    assert!(
        ack.text().ends_with(
            "\rMSA|AE|C1\rERR||PID^1^3^1^1|101^Required field missing^HL70357|E||||PID-3.1 is required\r"
        ),
        "{}",
        ack.text()
    );
}

#[test]
fn enhanced_mode_answers_with_commit_acks_when_msh_15_asks() {
    let with = |msh_15: &str, msh_16: &str| {
        read(&format!(
            "MSH|^~\\&|APP|FAC|||20240101120000||ADT^A08|C1|P|2.5|||{msh_15}|{msh_16}\rPID|1||1^^^^MR\r"
        ))
    };
    let accepted = Outcome::Accepted;
    let error = Outcome::refused(Refusal::MissingField {
        location: Location::field("PID", 3),
    });
    let reject = Outcome::refused(Refusal::UnsupportedVersion {
        version: "9".into(),
    });
    // Original mode: always answered, AA/AE/AR.
    let original = with("", "");
    assert!(!original.header().enhanced_mode());
    for (outcome, code) in [
        (&accepted, AckCode::ApplicationAccept),
        (&error, AckCode::ApplicationError),
        (&reject, AckCode::ApplicationReject),
    ] {
        assert!(ack_wanted(original.header(), outcome));
        assert_eq!(ack_for(&original, outcome).code(), code);
    }
    // Enhanced mode: CA/CE/CR, as MSH-15 asks.
    for (msh_15, msh_16, wanted) in [
        ("AL", "NE", [true, true, true]),
        ("NE", "AL", [false, false, false]),
        ("ER", "", [false, true, true]),
        ("SU", "", [true, false, false]),
        ("", "AL", [true, true, true]),
    ] {
        let message = with(msh_15, msh_16);
        assert!(message.header().enhanced_mode());
        for ((outcome, code), wanted) in [
            (&accepted, AckCode::CommitAccept),
            (&error, AckCode::CommitError),
            (&reject, AckCode::CommitReject),
        ]
        .into_iter()
        .zip(wanted)
        {
            assert_eq!(
                ack_wanted(message.header(), outcome),
                wanted,
                "MSH-15 {msh_15:?}, {code:?}"
            );
            assert_eq!(ack_for(&message, outcome).code(), code);
        }
    }
    assert_eq!(
        ack_for(&read(ORU_R01), &accepted).code(),
        AckCode::CommitAccept
    );
}

#[test]
fn a_frame_that_is_not_hl7_gets_ar_with_default_delimiters() {
    let Err(ReadError::NotHl7(reason)) = read_with(b"GET / HTTP/1.1\r\n\r\n", Charset::Utf8) else {
        panic!("read as HL7");
    };
    let ack = build_unreadable_ack(&reason, "ACK0002", now());
    assert_eq!(ack.code(), AckCode::ApplicationReject);
    assert_eq!(
        ack.text(),
        "MSH|^~\\&|||||20240506070809.010+0000||ACK|ACK0002|P|2.5\r\
         MSA|AR|\r\
         ERR||MSH^1|100^Segment sequence error^HL70357|E||||not an HL7 message: it does not start with an MSH segment\r"
    );
    let received = parse_ack(&ack.to_bytes(), &ReadOptions::default()).unwrap();
    assert_eq!(received.code, AckCode::ApplicationReject);
    assert_eq!(received.control_id, "");
}

#[test]
fn the_ack_parser_reads_back_what_the_builder_writes() {
    let message = read(ADT_A01);
    for outcome in [
        Outcome::Accepted,
        Outcome::refused(Refusal::SeveralPatients { pid_segments: 2 }),
        Outcome::refused(Refusal::UnsupportedProcessingId {
            processing_id: "T".into(),
        }),
    ] {
        let ack = build_ack(message.header(), &outcome, &new_control_id(), now());
        let received = parse_ack(&ack.to_bytes(), &ReadOptions::default()).unwrap();
        assert_eq!(received.code, ack.code());
        assert_eq!(received.control_id, "MSG599102");
        if let Outcome::Refused { refusal, .. } = &outcome {
            assert_eq!(received.text, refusal.to_string());
        }
    }
    let control_id = new_control_id();
    assert_eq!(control_id.len(), 20);
    assert!(control_id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_ne!(control_id, new_control_id());
}

#[test]
fn the_ack_parser_refuses_garbled_input() {
    let options = ReadOptions::default();
    let garbled: [&[u8]; 7] = [
        b"",
        b"\x0b\x1c\r",
        b"ACK|AA|1",
        b"MSH|^~\\&|A|B|C|D|20240101||ACK|9|P|2.5\r",
        b"MSH|^~\\&|A|B|C|D|20240101||ACK|9|P|2.5\rMSA|OK|1\r",
        b"MSH|^~\\&|A|B|C|D|20240101||ACK|9|P|2.5\rMSA|AA|1\rMSA|AE|2\r",
        b"MSH|^~\\&|A|B|C|D|20240101||ACK|9|P|2.5\rMSA|AA|\xff\r",
    ];
    for bytes in garbled {
        assert!(parse_ack(bytes, &options).is_err(), "{bytes:?}");
    }
    let fine = parse_ack(
        b"MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|9|P|2.3\nMSA|CE|MSG1|busy\n",
        &options,
    )
    .unwrap();
    assert_eq!(
        fine,
        ReceivedAck {
            code: AckCode::CommitError,
            control_id: "MSG1".into(),
            text: "busy".into(),
        }
    );
}

#[test]
fn an_oversized_frame_is_answered_from_its_first_segment() {
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    let mut codec = MllpCodec::new(64);
    let mut buf = BytesMut::new();
    codec.encode(ADT_A01.replace('\n', "\r"), &mut buf).unwrap();
    let Some(Frame::Oversized {
        bytes,
        first_segment: Some(first_segment),
    }) = codec.decode(&mut buf).unwrap()
    else {
        panic!("not reported as oversized");
    };
    assert_eq!(bytes, ADT_A01.len());
    let header = Header::read(&first_segment, &ReadOptions::default()).unwrap();
    let ack = ack_for_header(&header, Refusal::TooLarge { limit: 64 });
    assert_eq!(ack.code(), AckCode::ApplicationError);
    assert!(
        ack.text().ends_with(
            "\rMSA|AE|MSG599102|the message is larger than 64 bytes\rERR|^^^207&Application internal error&HL70357\r"
        ),
        "{}",
        ack.text()
    );
}

fn ack_for_header(header: &Header, refusal: Refusal) -> Ack {
    build_ack(header, &Outcome::refused(refusal), "ACK0003", now())
}

// --- Batches ---------------------------------------------------------------

#[test]
fn a_batch_splits_into_its_messages_and_a_bad_one_loses_no_other() {
    let batch = split_batch(BATCH.as_bytes()).unwrap();
    assert!(batch.is_batch());
    assert!(batch.file_header.unwrap().starts_with(b"FHS|"));
    assert_eq!(batch.batch_headers.len(), 1);
    assert_eq!(batch.messages.len(), 3);
    let results: Vec<Result<MappedMessage, Refusal>> = batch
        .messages
        .iter()
        .map(|bytes| {
            let message = read_with(bytes, Charset::Utf8).unwrap();
            map_message(&message, &MappingConfig::default())
        })
        .collect();
    assert_eq!(patient(results[0].as_ref().unwrap()), "0000112234");
    assert_eq!(
        results[1].as_ref().unwrap_err().code(),
        ErrorCode::RequiredFieldMissing
    );
    let third = results[2].as_ref().unwrap();
    assert_eq!(patient(third), "0000112299");
    assert_eq!(third.key.control_id, "12334456778892");
    assert_eq!(third.event.event_type.as_str(), "ADT^A08");
}

#[test]
fn batches_as_senders_write_them_are_split() {
    // After python-hl7's samples: headers and trailers are optional.
    let msh = |id: u32| {
        format!(
            "MSH|^~\\&||ABCHS||AUSDHSV|20070101112951||ADT^A04^ADT_A01|{id}|P|2.5\rEVN|A04|20060705000000\rPID|1||0000112234^^^100^A\r"
        )
    };
    let bhs = "BHS|^~\\&||ABCHS||AUSDHSV|20070101123401||||abchs20070101123401-1\r";
    let fhs = "FHS|^~\\&||ABCHS||AUSDHSV|20070101123401|||abchs20070101123401.hl7|\r";
    for (payload, count) in [
        (format!("{bhs}{}BTS|1\r", msh(1)), 1),
        (format!("{bhs}{}{}BTS|2\r", msh(1), msh(2)), 2),
        (format!("{}{}", msh(1), msh(2)), 2),
        (format!("{bhs}{}", msh(1)), 1),
        (format!("{}BTS|1\r", msh(1)), 1),
        (
            format!(
                "{fhs}{bhs}{}{}BTS|2\r{bhs}{}BTS|1\rFTS|2\r",
                msh(1),
                msh(2),
                msh(3)
            ),
            3,
        ),
        (format!("{fhs}{}{}FTS|1\r", msh(1), msh(2)), 2),
    ] {
        let batch = split_batch(payload.as_bytes()).unwrap();
        assert_eq!(batch.messages.len(), count, "{payload}");
        assert!(batch.is_batch());
        for message in &batch.messages {
            assert!(message.starts_with(b"MSH|"));
            assert!(read_with(message, Charset::Ascii).is_ok());
        }
    }
}

// --- Random input never panics ---------------------------------------------

/// Runs bytes through everything the listener and the delivery will call,
/// checking that every ACK built reads back with its code and MSA-2.
fn exercise(bytes: &[u8], rng: &mut StdRng) {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;

    let mut codec = MllpCodec::new(rng.random_range(1..512));
    let mut buf = BytesMut::new();
    let split = rng.random_range(0..=bytes.len());
    for chunk in [&bytes[..split], &bytes[split..]] {
        buf.extend_from_slice(chunk);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}

    let _ = split_batch(bytes);
    let config = MappingConfig {
        assigning_authority: rng.random_bool(0.5).then(|| "H".to_owned()),
        time_zone: Tz::Europe__Berlin,
        ..MappingConfig::default()
    };
    // One listener default a round: each costs a parse (slow in debug builds).
    let charsets = [Charset::Utf8, Charset::Latin1, Charset::Ascii];
    let default_charset = charsets[rng.random_range(0..charsets.len())];
    let options = ReadOptions { default_charset };
    let _ = parse_ack(bytes, &options);
    {
        let (header, outcome) = match Hl7Message::read(bytes, &options) {
            Err(ReadError::NotHl7(reason)) => {
                let ack = build_unreadable_ack(&reason, "X", now());
                assert!(parse_ack(&ack.to_bytes(), &options).is_ok());
                return;
            }
            Err(ReadError::Refused { header, refusal }) => (*header, Outcome::refused(refusal)),
            Ok(message) => {
                let _ = content_fingerprint(&message);
                let outcome = match map_message(&message, &config) {
                    Ok(mapped) => {
                        assert_eq!(mapped.fingerprint, content_fingerprint(&message));
                        Outcome::Accepted
                    }
                    Err(refusal) => Outcome::refused(refusal),
                };
                (message.header().clone(), outcome)
            }
        };
        let ack = build_ack(&header, &outcome, &new_control_id(), now());
        let received = parse_ack(
            &ack.to_bytes(),
            &ReadOptions {
                default_charset: ack.charset(),
            },
        )
        .unwrap_or_else(|error| panic!("{error}: {:?}", ack.text()));
        assert_eq!(received.code, ack.code());
        // MSA-2 is MSH-10 as decoded: a byte invalid in the message's set
        // (a message refused for it) cannot be echoed as it was sent.
        let charset = ack.charset();
        let echoed = charset.decode_lossy(&charset.encode(&header.control_id()));
        assert_eq!(received.control_id, echoed);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x4c37);
    for _ in 0..3000 {
        let len = rng.random_range(0..300);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        // Half start like a message, to get past the first check.
        if rng.random_bool(0.5) {
            bytes.splice(0..0, b"MSH|^~\\&|".iter().copied());
        }
        exercise(&bytes, &mut rng);
    }
}

#[test]
fn mutated_samples_never_panic() {
    const INTERESTING: &[u8] = b"|^~\\&#\r\n\x0b\x1c\"MSPIDEVNOBR0123456789.+-\xff\xc3\xa9";
    let samples = [ADT_A01, ORU_R01, BATCH];
    let mut rng = StdRng::seed_from_u64(0x4c38);
    for round in 0..2000 {
        let mut bytes = samples[round % samples.len()].as_bytes().to_vec();
        for _ in 0..rng.random_range(1..8) {
            let at = rng.random_range(0..bytes.len());
            let byte = if rng.random_bool(0.8) {
                INTERESTING[rng.random_range(0..INTERESTING.len())]
            } else {
                rng.random()
            };
            match rng.random_range(0..4) {
                0 => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 => {
                    let end = (at + rng.random_range(1..40)).min(bytes.len());
                    bytes.drain(at..end);
                }
                _ => bytes.truncate(at.max(1)),
            }
            if bytes.is_empty() {
                bytes.push(byte);
            }
        }
        exercise(&bytes, &mut rng);
    }
}
