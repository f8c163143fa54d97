//! The agent's durable event spool: every event is appended here, numbered and hash-chained,
//! before anything tries to deliver it.
//!
//! Layout (`STATE_DIR/spool/`): segment files `seg-<first seq, 20 digits>.log` of records, one per
//! line: `SUM SEQ JSON`, SUM being the first 8 hex digits of the SHA-256 of `SEQ JSON`, and JSON
//! the event (with `seq` and `prev_hash`). `acked` holds the last sequence number the collector acknowledged.
//!
//! - **Torn tail**: at open, the newest segment is read back; anything after the last complete,
//!   checksummed record (a write cut by a crash or power loss) is cut off and counted.
//! - **fsync**: [`Spool::sync`] is called by the writer at most every 100 ms and when idle.
//! - **When full** (`cap_bytes`, default 256 MiB): segments the collector acknowledged are deleted
//!   first; if that is not enough the event is refused and counted ([`Spool::dropped`]), and the
//!   next event that fits is preceded by an `events_dropped` event saying how many were lost. The
//!   count is also in `interdict status`. Nothing is dropped silently.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use interdict_event::{Event, EventKind, Origin, GENESIS_HASH};

/// A segment is closed and a new one started past this size, or past a quarter of the cap (so
/// that acknowledged segments can go and free room before the cap is reached: the newest
/// segment is never deleted).
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// The spool, owned by the single writer.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    cap: u64,
    file: File,
    seg_bytes: u64,
    /// Bytes of all segments as last known (only ever too high: deletions happen elsewhere).
    total: u64,
    next_seq: u64,
    last_hash: String,
    dirty: bool,
    dropped_pending: u64,
    /// Events refused because the spool was full, since start.
    pub dropped: u64,
    /// Bytes cut from a torn tail at open.
    pub torn_bytes: u64,
}

fn seg_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

/// The segments in `dir`, oldest first: (first seq, path).
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("seg-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((n, e.path()));
    }
    out.sort();
    Ok(out)
}

fn sum8(body: &str) -> String {
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(body));
    hex::encode(&digest[..4])
}

/// One record line checked: its sequence number and the event's JSON when the checksum (over
/// both) holds.
pub fn check_line(line: &str) -> Option<(u64, &str)> {
    let (sum, body) = line.split_once(' ')?;
    if sum != sum8(body) {
        return None;
    }
    let (seq, json) = body.split_once(' ')?;
    Some((seq.parse().ok()?, json))
}

fn record_line(seq: u64, json: &str) -> String {
    let body = format!("{seq} {json}");
    format!("{} {body}\n", sum8(&body))
}

/// A reader of the spool, each with its own cursor file. Segments go once every active
/// consumer is past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    /// The collector's shipper (`acked`: the sequence number the collector acknowledged).
    Collector,
    /// The syslog sink (`syslog.acked`).
    Syslog,
}

impl Consumer {
    /// Every consumer.
    pub const ALL: [Consumer; 2] = [Consumer::Collector, Consumer::Syslog];

    /// Its cursor file in the spool folder.
    pub fn file(self) -> &'static str {
        match self {
            Consumer::Collector => "acked",
            Consumer::Syslog => "syslog.acked",
        }
    }
}

/// The last sequence number a consumer has delivered (0 when none).
pub fn cursor(dir: &Path, who: Consumer) -> u64 {
    std::fs::read_to_string(dir.join(who.file()))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Read the sequence number the collector acknowledged (0 when none).
pub fn acked(dir: &Path) -> u64 {
    cursor(dir, Consumer::Collector)
}

/// Say which consumers are active: a missing cursor is created (at 0: everything still spooled
/// is theirs), the cursor of one no longer configured is removed so it holds nothing back.
pub fn set_consumers(dir: &Path, active: &[Consumer]) -> io::Result<()> {
    for c in Consumer::ALL {
        let p = dir.join(c.file());
        if active.contains(&c) {
            if !p.exists() {
                crate::fsutil::write_atomic(&p, b"0\n", 0o600)?;
            }
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Record `seq` as acknowledged by the collector (see [`ack_as`]).
pub fn ack(dir: &Path, seq: u64) -> io::Result<()> {
    ack_as(dir, Consumer::Collector, seq)
}

/// Record `seq` as delivered by consumer `who` and delete the segments every consumer is past
/// (never the newest).
pub fn ack_as(dir: &Path, who: Consumer, seq: u64) -> io::Result<()> {
    if seq <= cursor(dir, who) {
        return Ok(());
    }
    crate::fsutil::write_atomic(&dir.join(who.file()), format!("{seq}\n").as_bytes(), 0o600)?;
    let done = Consumer::ALL
        .iter()
        .filter(|c| dir.join(c.file()).exists())
        .map(|c| cursor(dir, *c))
        .min()
        .unwrap_or(seq);
    let segs = segments(dir)?;
    for w in segs.windows(2) {
        // Every record of w[0] is below the next segment's first.
        if w[1].0 <= done + 1 {
            let _ = std::fs::remove_file(&w[0].1);
        }
    }
    Ok(())
}

/// Up to `max` records after `after`, as (seq, event JSON), oldest first. A line that fails its
/// checksum is skipped (the collector then sees a gap); an incomplete last line is not read yet.
pub fn read_after(dir: &Path, after: u64, max: usize) -> io::Result<Vec<(u64, String)>> {
    let segs = segments(dir)?;
    let mut out = Vec::new();
    for (i, (_, path)) in segs.iter().enumerate() {
        if let Some((next_first, _)) = segs.get(i + 1) {
            if *next_first <= after + 1 {
                continue;
            }
        }
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut r = BufReader::new(f);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if r.read_until(b'\n', &mut buf)? == 0 || buf.last() != Some(&b'\n') {
                break;
            }
            // A damaged record (even one that is no longer text) is skipped: a gap, not a stop.
            let Ok(line) = std::str::from_utf8(&buf[..buf.len() - 1]) else {
                continue;
            };
            // What was delivered already is passed over without hashing it again.
            let seq = line.split(' ').nth(1).and_then(|s| s.parse::<u64>().ok());
            if seq.is_some_and(|s| s <= after) {
                continue;
            }
            let Some((seq, json)) = check_line(line) else {
                continue;
            };
            if seq > after {
                out.push((seq, json.to_string()));
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

impl Spool {
    /// Open (or create) the spool in `dir`, cutting a torn tail.
    pub fn open(dir: &Path, cap_bytes: u64) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let segs = segments(dir)?;
        let (mut next_seq, mut last_hash) = (acked(dir) + 1, GENESIS_HASH.to_string());
        let mut torn_bytes = 0;
        let (path, seg_bytes) = match segs.last() {
            None => (dir.join(seg_name(next_seq)), 0),
            Some((_, path)) => {
                let mut data = Vec::new();
                File::open(path)?.read_to_end(&mut data)?;
                // Keep everything up to the last complete record whose checksum holds; a bad
                // record before it stays (the collector sees a gap), what follows it is a torn
                // tail.
                let mut good = 0usize;
                let mut pos = 0usize;
                while let Some(nl) = data[pos..].iter().position(|b| *b == b'\n') {
                    let line = &data[pos..pos + nl];
                    if let Some((seq, json)) = std::str::from_utf8(line).ok().and_then(check_line) {
                        next_seq = seq + 1;
                        last_hash = interdict_event::sha256_hex(json.as_bytes());
                        good = pos + nl + 1;
                    }
                    pos += nl + 1;
                }
                if good < data.len() {
                    torn_bytes = (data.len() - good) as u64;
                    let f = OpenOptions::new().write(true).open(path)?;
                    f.set_len(good as u64)?;
                    f.sync_all()?;
                }
                (path.clone(), good as u64)
            }
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(&path)?;
        file.seek(SeekFrom::End(0))?;
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            cap: cap_bytes,
            file,
            seg_bytes,
            total: 0,
            next_seq,
            last_hash,
            dirty: false,
            dropped_pending: 0,
            dropped: 0,
            torn_bytes,
        };
        spool.total = spool.total_bytes();
        Ok(spool)
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn total_bytes(&self) -> u64 {
        segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Number, chain and append `e`. `Ok(false)` when the spool is full and the event was
    /// refused (and counted). `origin` stamps the `events_dropped` notice when there is one.
    pub fn append(&mut self, e: &mut Event, origin: &Origin) -> io::Result<bool> {
        if self.dropped_pending > 0 {
            let mut d = origin.event(EventKind::EventsDropped);
            d.message = Some(format!(
                "{} event(s) dropped: the spool was full ({} bytes)",
                self.dropped_pending, self.cap
            ));
            if self.put(&mut d)? {
                self.dropped_pending = 0;
            } else {
                self.count_drop();
                return Ok(false);
            }
        }
        if self.put(e)? {
            Ok(true)
        } else {
            self.count_drop();
            Ok(false)
        }
    }

    fn count_drop(&mut self) {
        self.dropped += 1;
        self.dropped_pending += 1;
    }

    fn put(&mut self, e: &mut Event) -> io::Result<bool> {
        e.seq = Some(self.next_seq);
        e.prev_hash = Some(self.last_hash.clone());
        let json = e.to_json_line();
        let line = record_line(self.next_seq, &json);
        let seg_max = SEGMENT_BYTES.min(self.cap / 4).max(1);
        if self.seg_bytes + line.len() as u64 > seg_max && self.seg_bytes > 0 {
            self.rotate()?;
        }
        if self.total + line.len() as u64 > self.cap {
            // Acknowledged segments may have gone since: look again before refusing.
            self.total = self.total_bytes();
            if self.total + line.len() as u64 > self.cap {
                e.seq = None;
                e.prev_hash = None;
                return Ok(false);
            }
        }
        self.file.write_all(line.as_bytes())?;
        self.seg_bytes += line.len() as u64;
        self.total += line.len() as u64;
        self.dirty = true;
        self.last_hash = interdict_event::sha256_hex(json.as_bytes());
        self.next_seq += 1;
        Ok(true)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        let path = self.dir.join(seg_name(self.next_seq));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode_0600()
            .open(path)?;
        self.seg_bytes = 0;
        self.dirty = false;
        Ok(())
    }

    /// fdatasync what was appended since the last call.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            host_id: "h".into(),
            hostname: "h".into(),
        }
    }

    #[test]
    fn records_are_numbered_chained_and_survive_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let o = origin();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        let mut hashes = Vec::new();
        for _ in 0..5 {
            let mut e = o.event(EventKind::ExecDenied);
            assert!(s.append(&mut e, &o).unwrap());
            hashes.push(e.record_hash());
        }
        s.sync().unwrap();
        drop(s);
        // A crash in the middle of the sixth record.
        let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"1234abcd 6 {\"id\":\"torn").unwrap();
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.torn_bytes, b"1234abcd 6 {\"id\":\"torn".len() as u64);
        assert_eq!(s.next_seq(), 6);
        let mut e = o.event(EventKind::ExecDenied);
        s.append(&mut e, &o).unwrap();
        assert_eq!(e.seq, Some(6));
        assert_eq!(e.prev_hash.as_deref(), Some(hashes[4].as_str()));
        let all = read_after(dir.path(), 0, 100).unwrap();
        assert_eq!(
            all.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn a_full_spool_refuses_counts_and_then_says_how_many_were_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let o = origin();
        let mut s = Spool::open(dir.path(), 4096).unwrap();
        let mut stored = 0;
        for _ in 0..100 {
            let mut e = o.event(EventKind::ExecDenied);
            if s.append(&mut e, &o).unwrap() {
                stored += 1;
            }
        }
        assert!(stored > 5 && stored < 100, "{stored}");
        assert_eq!(s.dropped, 100 - stored);
        assert!(
            segments(dir.path()).unwrap().len() > 1,
            "segments of a quarter of the cap"
        );
        // The collector acknowledges everything: space comes back once old segments go.
        let last = s.next_seq() - 1;
        let mut s2 = s;
        ack(dir.path(), last).unwrap();
        let mut e = o.event(EventKind::ExecDenied);
        assert!(s2.append(&mut e, &o).unwrap());
        let recs = read_after(dir.path(), last, 10).unwrap();
        let first: Event = serde_json::from_str(&recs[0].1).unwrap();
        assert_eq!(first.kind, EventKind::EventsDropped);
        assert!(first
            .message
            .unwrap()
            .starts_with(&format!("{} event(s) dropped", 100 - stored)));
        assert_eq!(recs.len(), 2);
    }

    #[test]
    fn a_segment_goes_only_when_every_consumer_is_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = origin();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        set_consumers(dir.path(), &Consumer::ALL).unwrap();
        for _ in 0..3 {
            s.append(&mut o.event(EventKind::ExecDenied), &o).unwrap();
        }
        s.rotate().unwrap();
        s.append(&mut o.event(EventKind::ExecDenied), &o).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 2);
        ack(dir.path(), 4).unwrap();
        assert_eq!(
            segments(dir.path()).unwrap().len(),
            2,
            "syslog has not sent them yet"
        );
        ack_as(dir.path(), Consumer::Syslog, 3).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        // A consumer no longer configured holds nothing back.
        set_consumers(dir.path(), &[Consumer::Collector]).unwrap();
        assert!(!dir.path().join("syslog.acked").exists());
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_skipped_not_a_reason_to_cut_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let o = origin();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        for _ in 0..4 {
            s.append(&mut o.event(EventKind::ExecDenied), &o).unwrap();
        }
        s.sync().unwrap();
        drop(s);
        let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
        let text = std::fs::read_to_string(&seg).unwrap();
        // A flipped byte in record 2.
        let damaged = text.replacen("exec_denied", "exec_dEnied", 2).replacen(
            "exec_dEnied",
            "exec_denied",
            1,
        );
        std::fs::write(&seg, damaged).unwrap();
        let s = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(s.torn_bytes, 0);
        assert_eq!(s.next_seq(), 5);
        let seqs: Vec<u64> = read_after(dir.path(), 0, 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![1, 3, 4]);
    }

    proptest::proptest! {
        /// Whatever a segment holds (a crash, a disk error, an attacker with root), opening the
        /// spool and reading it never panics, and every record it returns passed its checksum.
        #[test]
        fn any_segment_content_is_survived(
            good in 0usize..5,
            junk in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let o = origin();
            let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
            for _ in 0..good {
                s.append(&mut o.event(EventKind::ExecDenied), &o).unwrap();
            }
            drop(s);
            let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
            let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
            f.write_all(&junk).unwrap();
            drop(f);
            let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
            let recs = read_after(dir.path(), 0, 100).unwrap();
            proptest::prop_assert!(recs.len() >= good);
            for (i, (seq, _)) in recs.iter().take(good).enumerate() {
                proptest::prop_assert_eq!(*seq, i as u64 + 1);
            }
            let mut e = o.event(EventKind::ExecDenied);
            s.append(&mut e, &o).unwrap();
            proptest::prop_assert!(e.seq.unwrap() > good as u64);
        }
    }

    #[test]
    fn a_record_that_is_no_longer_text_is_skipped_by_readers() {
        let dir = tempfile::tempdir().unwrap();
        let o = origin();
        let mut s = Spool::open(dir.path(), 1 << 30).unwrap();
        for _ in 0..3 {
            s.append(&mut o.event(EventKind::ExecDenied), &o).unwrap();
        }
        drop(s);
        let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 20;
        bytes[second] = 0xff;
        std::fs::write(&seg, bytes).unwrap();
        let seqs: Vec<u64> = read_after(dir.path(), 0, 10)
            .unwrap()
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(Spool::open(dir.path(), 1 << 30).unwrap().next_seq(), 4);
    }
}
