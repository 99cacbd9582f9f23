//! Patient identifiers in logs and spans. A `patientId` is a medical record
//! number, one of HIPAA's identifiers, so log lines carry a keyed pseudonym
//! of it instead: `HMAC-SHA256(key, patientId)`, first 12 hex digits. The key
//! is the deployment's (kept in the database, or `LOG_PSEUDONYM_KEY`), so a
//! patient's lines still correlate across instances and restarts, while the
//! logs alone do not reveal the number. `LOG_PATIENT_ID=plain` opts out.

use std::fmt;
use std::sync::OnceLock;

use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Clone)]
pub enum PatientLogging {
    Pseudonym { key: Vec<u8> },
    Plain,
}

static MODE: OnceLock<PatientLogging> = OnceLock::new();

/// Sets how patient ids are logged, once per process (later calls are ignored).
pub fn init(mode: PatientLogging) {
    let _ = MODE.set(mode);
}

/// A patient id as it may appear in a log line or span.
pub fn patient(patient_id: &str) -> PatientTag<'_> {
    PatientTag(patient_id)
}

pub struct PatientTag<'a>(&'a str);

impl fmt::Display for PatientTag<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Before `init` (a library user, a test), pseudonymize with a fixed
        // key rather than leak the id.
        let key: &[u8] = match MODE.get() {
            Some(PatientLogging::Plain) => return f.write_str(self.0),
            Some(PatientLogging::Pseudonym { key }) => key,
            None => b"medical-events-unset-key",
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        mac.update(self.0.as_bytes());
        let digest = mac.finalize().into_bytes();
        f.write_str("p-")?;
        for byte in &digest[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pseudonym_is_stable_and_hides_the_id() {
        let first = patient("MRN-0042").to_string();
        assert_eq!(first, patient("MRN-0042").to_string());
        assert_ne!(first, patient("MRN-0043").to_string());
        assert!(!first.contains("0042"), "{first}");
        assert_eq!(first.len(), 14);
    }
}
