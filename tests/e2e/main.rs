//! Black-box tests in one binary: real SecantusDB servers, the real services
//! (in-process or spawned binaries), real sockets, real faults. One module
//! per area; `support` is what they share (the services, the database, the
//! fault proxy, the downstream sink, the database checks).

mod support;

mod api_contract;
mod api_validation;
mod clients;
mod connections;
mod database_time;
mod end_to_end;
mod fleet;
mod intake;
mod mllp;
mod observability;
mod operations;
mod outcome_stream;
mod privacy;
mod processing;
mod query_plans;
mod resilience;
mod retries;
mod security;
