//! Every setting a service reads, with its default, as the parsers declare
//! them; and the check that the README's configuration table says the same.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{Default, Source};

/// A source that lends the values of another and records every setting the
/// parsers declare.
pub struct Catalog<'a, S> {
    values: &'a S,
    declared: RefCell<BTreeMap<&'static str, Default>>,
}

impl<'a, S: Source> Catalog<'a, S> {
    pub fn new(values: &'a S) -> Self {
        Self {
            values,
            declared: RefCell::default(),
        }
    }

    /// What was declared: each setting once, with its default.
    pub fn settings(&self) -> BTreeMap<&'static str, Default> {
        self.declared.borrow().clone()
    }
}

impl<S: Source> Source for Catalog<'_, S> {
    fn get(&self, name: &str) -> Option<String> {
        self.values.get(name)
    }

    fn declare(&self, name: &'static str, default: Default) {
        self.declared.borrow_mut().entry(name).or_insert(default);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::config::{IngestConfig, ProcessorConfig};

    /// The README's configuration table: per variable, per service, the
    /// default as written (backticks removed).
    fn readme_table() -> BTreeMap<(String, &'static str), String> {
        let readme = include_str!("../../../../README.md");
        let table = readme
            .split("## Configuration")
            .nth(1)
            .expect("README has a Configuration section");
        let mut rows = BTreeMap::new();
        for line in table
            .lines()
            .skip_while(|l| !l.starts_with("| variable"))
            .skip(2)
        {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (names, service, defaults) = (cells[1], cells[2], cells[3]);
            let names: Vec<String> = names
                .split(" / ")
                .map(|n| n.trim_matches('`').to_owned())
                .collect();
            let defaults: Vec<String> = defaults.split(" / ").map(|d| d.replace('`', "")).collect();
            let services: &[&'static str] = match service {
                "ingest" => &["ingest"],
                "processor" => &["processor"],
                _ => &["ingest", "processor"],
            };
            for (i, name) in names.iter().enumerate() {
                for (j, service) in services.iter().enumerate() {
                    // One default for all; one per name; or one per service.
                    let default = if defaults.len() == names.len() {
                        &defaults[i]
                    } else if defaults.len() == services.len() && names.len() == 1 {
                        &defaults[j]
                    } else {
                        &defaults[0]
                    };
                    rows.insert((name.clone(), *service), default.clone());
                }
            }
        }
        rows
    }

    fn shown(default: &Default) -> String {
        match default {
            Default::Required => "required".to_owned(),
            Default::None => "none".to_owned(),
            Default::Value(value) => value.clone(),
        }
    }

    /// Issue 14: each setting is written once in the code (its parser, with
    /// its default); this keeps the README's table in step with it, both
    /// ways: every variable a service reads is in the table with the same
    /// default, and the table lists nothing the services do not read.
    #[test]
    fn every_setting_read_is_in_the_readme_with_its_default_and_the_reverse() {
        let ingest_values = [
            ("MONGO_URI", "mongodb://db/medical_events"),
            ("PROCESSOR_URL", "http://processor:3001"),
            ("AUTH_DISABLED", "true"),
        ];
        let processor_values = [("MONGO_URI", "mongodb://db"), ("AUTH_DISABLED", "true")];
        let ingest = Catalog::new(&ingest_values);
        IngestConfig::from_source(&ingest).unwrap();
        let processor = Catalog::new(&processor_values);
        ProcessorConfig::from_source(&processor).unwrap();
        let mut code = BTreeMap::new();
        for (service, catalog) in [
            ("ingest", &ingest.settings()),
            ("processor", &processor.settings()),
        ] {
            for (name, default) in catalog {
                code.insert(((*name).to_owned(), service), shown(default));
            }
        }
        let readme = readme_table();
        let mut wrong = Vec::new();
        for (key, default) in &code {
            match readme.get(key) {
                None => wrong.push(format!(
                    "{} ({}) is read but not in the README's table",
                    key.0, key.1
                )),
                Some(written) if written != default => wrong.push(format!(
                    "{} ({}): the code's default is {default:?}, the README says {written:?}",
                    key.0, key.1
                )),
                Some(_) => {}
            }
        }
        let read: BTreeSet<_> = code.keys().collect();
        for key in readme.keys() {
            if !read.contains(key) {
                wrong.push(format!(
                    "{} ({}) is in the README's table but not read",
                    key.0, key.1
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
