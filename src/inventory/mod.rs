//! What is on this host: accounts, running processes, installed software, file digests and the
//! persistent hash cache. Shared by the one-shot scan and the agent; knows nothing of the agent.

pub mod facts;
pub mod footprint;
pub mod hash;
pub mod hash_cache;
pub mod host;
pub mod installed;
pub mod packages;
pub mod procs;
pub mod records;
pub mod walk_state;
