//! Where events go: the local event log, the spool, the collector shipper, syslog.

pub mod ship;
pub mod spool;
pub mod syslog;
