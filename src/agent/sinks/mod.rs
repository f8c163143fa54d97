//! Where events go: the event writer (local event log and spool), the collector shipper, the
//! syslog sink, the heartbeat.

pub mod event_log;
pub mod heartbeat;
pub mod ship;
pub mod spool;
pub mod syslog;
