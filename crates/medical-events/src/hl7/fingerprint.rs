//! What makes a resend the same message. MSH-10 is unique per sender only,
//! so the sender's key is (MSH-3, MSH-4, MSH-10); and since some senders
//! reuse control ids for other content, the key comes with a fingerprint of
//! the content. MSH-7 is left out of the fingerprint: some senders restamp
//! it when they resend after a lost ACK. The caller combines both with the
//! client (and patient) it stores them under.

use sha2::{Digest, Sha256};

use super::message::{Header, Hl7Message};

/// The sender's id of a message: MSH-3, MSH-4 and MSH-10, each decoded and,
/// for MSH-3/4 (HD), its components joined by `^`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageKey {
    pub sending_application: String,
    pub sending_facility: String,
    pub control_id: String,
}

impl MessageKey {
    /// One string for the three, unambiguous whatever they contain (a JSON
    /// array), for a store that keys on text.
    pub fn to_key_text(&self) -> String {
        serde_json::json!([
            self.sending_application,
            self.sending_facility,
            self.control_id
        ])
        .to_string()
    }
}

pub fn message_key(header: &Header) -> MessageKey {
    MessageKey {
        sending_application: header.canonical(3),
        sending_facility: header.canonical(4),
        control_id: header.control_id(),
    }
}

/// SHA-256 (hex) of the decoded, normalized message (segments ended by CR,
/// no empty segments) with MSH-7 blanked: equal for a resend whatever its
/// MSH-7, character set or line ends; different for any other change.
pub fn content_fingerprint(message: &Hl7Message) -> String {
    let field = message.header().separators().field;
    let mut digest = Sha256::new();
    for (index, segment) in message.segment_texts().enumerate() {
        if index == 0 {
            // The first segment is the MSH: MSH-7 is its seventh field,
            // the sixth after the name once MSH-1 is taken as a separator.
            for (position, part) in segment.split(field).enumerate() {
                if position > 0 {
                    digest.update(field.encode_utf8(&mut [0; 4]).as_bytes());
                }
                if position != 6 {
                    digest.update(part.as_bytes());
                }
            }
        } else {
            digest.update(segment.as_bytes());
        }
        digest.update(b"\r");
    }
    format!("{:x}", digest.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::message::ReadOptions;

    fn read(text: &str) -> Hl7Message {
        Hl7Message::read(text.as_bytes(), &ReadOptions::default()).unwrap()
    }

    const SENT: &str = "MSH|^~\\&|LAB|NORTH|EHR|CITY|20240102030405||ORU^R01|42|P|2.5\rPID|||7^^^^MR\rOBX|1|NM|GLU||5.4\r";

    #[test]
    fn a_resend_with_a_new_msh_7_has_the_same_fingerprint() {
        let resent = SENT.replace("20240102030405", "20240102031000");
        assert_eq!(
            content_fingerprint(&read(SENT)),
            content_fingerprint(&read(&resent))
        );
        let lf = SENT.replace('\r', "\n");
        assert_eq!(
            content_fingerprint(&read(SENT)),
            content_fingerprint(&read(&lf))
        );
    }

    #[test]
    fn other_content_has_another_fingerprint() {
        let original = content_fingerprint(&read(SENT));
        for changed in [
            SENT.replace("5.4", "5.5"),
            SENT.replace("|42|", "|43|"),
            SENT.replace("ORU^R01", "ORU^R02"),
            SENT.replace("20240102030405||", "20240102030405|X|"),
            format!("{SENT}NTE|1||note\r"),
        ] {
            assert_ne!(content_fingerprint(&read(&changed)), original, "{changed}");
        }
    }

    #[test]
    fn the_key_is_application_facility_and_control_id() {
        let key = message_key(read(SENT).header());
        assert_eq!(
            key,
            MessageKey {
                sending_application: "LAB".into(),
                sending_facility: "NORTH".into(),
                control_id: "42".into(),
            }
        );
        assert_eq!(key.to_key_text(), r#"["LAB","NORTH","42"]"#);
        let other_delimiters = read("MSH*:~\\&*LAB:1.2:ISO*NORTH******42\r");
        assert_eq!(
            message_key(other_delimiters.header()).sending_application,
            "LAB^1.2^ISO"
        );
    }
}
