//! Signing in to the console: one-time links and sessions.
//!
//! `interdict-collector reviewer NAME --login-link --base-url URL` makes a link holding a fresh
//! 256-bit secret, valid for [`LINK_VALID_MS`] and usable once; only its SHA-256 is stored, with
//! the reviewer's token hash at that time. Opening the link moves the secret from the address into
//! a short-lived cookie and shows a sign-in button; the button's POST (same origin only) uses the
//! link up and starts a session: a new 256-bit secret in an `HttpOnly`, `SameSite=Strict` cookie
//! (`Secure` over HTTPS), stored hashed. A session ends when unused for `session_idle_s`, at
//! `session_max_s` after signing in, at logout, and at once when the reviewer is revoked or given a
//! new token (the session holds the token hash it was started under). Agent tokens and reviewer
//! API tokens are not sessions: the console accepts only its own cookie.

use interdict_chain::{hex, sha256};

use crate::config::ConsoleConfig;
use crate::sql::{DbError, Val};
use crate::store::{new_token, now_ms, token_hash, Store, StoreError};

/// How long a sign-in link is valid: 10 minutes.
pub const LINK_VALID_MS: i64 = 10 * 60 * 1000;

/// A session is marked used at most once a minute (not a database write per page).
const SEEN_EVERY_MS: i64 = 60 * 1000;

/// Where a sign-in link stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Valid: it signs in this reviewer until this time (ms).
    Valid {
        /// The reviewer.
        reviewer: String,
        /// Until when.
        expires_ms: i64,
    },
    /// Used already.
    Used,
    /// Expired.
    Expired,
    /// The reviewer was revoked or given a new token since the link was made.
    Revoked,
    /// No such link.
    Unknown,
}

impl LinkState {
    /// What to tell the person holding the link, when it cannot sign in.
    pub fn refusal(&self) -> &'static str {
        match self {
            LinkState::Valid { .. } => "",
            LinkState::Used => "This sign-in link has been used already: each link signs in once.",
            LinkState::Expired => "This sign-in link has expired: links are valid for 10 minutes.",
            LinkState::Revoked => {
                "This sign-in link no longer works: the reviewer it was made for was revoked or given a new token."
            }
            LinkState::Unknown => "This is not a valid sign-in link.",
        }
    }
}

/// A signed-in reviewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The reviewer's name.
    pub reviewer: String,
    /// The token that logout forms must carry (derived from the session's secret).
    pub csrf: String,
}

/// The form token that goes with a secret (a session's or a link's): forms posted from another
/// site cannot know it.
pub fn csrf_for(secret: &str) -> String {
    hex(&sha256(
        format!("interdict-console-form\0{secret}").as_bytes(),
    ))
}

fn reviewer_token_hash(store: &Store, name: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .db()
        .read(|c| {
            c.rows(
                "SELECT token_sha256 FROM reviewers WHERE name = ?1",
                &[name.into()],
            )
        })?
        .into_iter()
        .next()
        .and_then(|r| r[0].text()))
}

/// Make a one-time sign-in link secret for reviewer `name` (shown once; only its hash is kept).
/// `None` when there is no such reviewer. Links and sessions long over are deleted on the way.
pub fn create_link(store: &Store, name: &str) -> Result<Option<String>, StoreError> {
    let Some(token_sha) = reviewer_token_hash(store, name)? else {
        return Ok(None);
    };
    let secret = new_token();
    let now = now_ms();
    store.db().tx(|t| -> Result<(), DbError> {
        t.exec(
            "DELETE FROM console_links WHERE expires_ms < ?1",
            &[(now - 86_400_000).into()],
        )?;
        t.exec(
            "INSERT INTO console_links (secret_sha256, reviewer, reviewer_token_sha256, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &[
                token_hash(&secret).into(),
                name.into(),
                token_sha.as_str().into(),
                now.into(),
                (now + LINK_VALID_MS).into(),
            ],
        )?;
        Ok(())
    })?;
    Ok(Some(secret))
}

/// Where the link with this secret stands (nothing is changed).
pub fn link_state(store: &Store, secret: &str) -> Result<LinkState, StoreError> {
    let row = store
        .db()
        .read(|c| {
            c.rows(
                "SELECT l.reviewer, l.expires_ms, l.used_ms, l.reviewer_token_sha256, r.token_sha256
                 FROM console_links l LEFT JOIN reviewers r ON r.name = l.reviewer
                 WHERE l.secret_sha256 = ?1",
                &[token_hash(secret).into()],
            )
        })?
        .into_iter()
        .next();
    let Some(r) = row else {
        return Ok(LinkState::Unknown);
    };
    Ok(classify(&r, now_ms()))
}

fn classify(r: &[Val], now: i64) -> LinkState {
    if !matches!(r[2], Val::Null) {
        LinkState::Used
    } else if r[1].int() <= now {
        LinkState::Expired
    } else if r[4].text() != r[3].text() {
        LinkState::Revoked
    } else {
        LinkState::Valid {
            reviewer: r[0].text().unwrap_or_default(),
            expires_ms: r[1].int(),
        }
    }
}

/// Use the link with this secret up and start a session: `Ok((session secret, reviewer))`, or
/// why not. Used once, even when two requests race (the second finds it used).
pub fn redeem(
    store: &Store,
    secret: &str,
) -> Result<Result<(String, String), LinkState>, StoreError> {
    let now = now_ms();
    let session = new_token();
    let h = token_hash(secret);
    Ok(store.db().tx(|t| -> Result<_, DbError> {
        let row = t
            .rows(
                "SELECT l.reviewer, l.expires_ms, l.used_ms, l.reviewer_token_sha256, r.token_sha256
                 FROM console_links l LEFT JOIN reviewers r ON r.name = l.reviewer
                 WHERE l.secret_sha256 = ?1",
                &[h.as_str().into()],
            )?
            .into_iter()
            .next();
        let Some(r) = row else {
            return Ok(Err(LinkState::Unknown));
        };
        let state = classify(&r, now);
        let LinkState::Valid { reviewer, .. } = state else {
            return Ok(Err(state));
        };
        let n = t.exec(
            "UPDATE console_links SET used_ms = ?2 WHERE secret_sha256 = ?1 AND used_ms IS NULL",
            &[h.as_str().into(), now.into()],
        )?;
        if n != 1 {
            return Ok(Err(LinkState::Used));
        }
        t.exec(
            "DELETE FROM console_sessions WHERE created_ms < ?1",
            &[(now - 30 * 86_400_000).into()],
        )?;
        t.exec(
            "INSERT INTO console_sessions (id_sha256, reviewer, reviewer_token_sha256, created_ms, seen_ms)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            &[
                token_hash(&session).into(),
                reviewer.as_str().into(),
                r[3].clone(),
                now.into(),
            ],
        )?;
        Ok(Ok((session, reviewer)))
    })?)
}

/// The session with this secret, if it is live; marks it used.
pub fn session(
    store: &Store,
    secret: &str,
    cfg: &ConsoleConfig,
) -> Result<Option<Session>, StoreError> {
    let now = now_ms();
    let h = token_hash(secret);
    let row = store
        .db()
        .read(|c| {
            c.rows(
                "SELECT s.reviewer, s.created_ms, s.seen_ms FROM console_sessions s
                 JOIN reviewers r ON r.name = s.reviewer AND r.token_sha256 = s.reviewer_token_sha256
                 WHERE s.id_sha256 = ?1",
                &[h.as_str().into()],
            )
        })?
        .into_iter()
        .next();
    let Some(r) = row else {
        return Ok(None);
    };
    let (created, seen) = (r[1].int(), r[2].int());
    let idle = cfg.session_idle_s as i64 * 1000;
    let max = cfg.session_max_s as i64 * 1000;
    if now - seen > idle || now - created > max {
        end(store, secret)?;
        return Ok(None);
    }
    if now - seen > SEEN_EVERY_MS {
        store.db().with(|c| {
            c.exec(
                "UPDATE console_sessions SET seen_ms = ?2 WHERE id_sha256 = ?1",
                &[h.as_str().into(), now.into()],
            )
        })?;
    }
    Ok(Some(Session {
        reviewer: r[0].text().unwrap_or_default(),
        csrf: csrf_for(secret),
    }))
}

/// End the session with this secret (logout).
pub fn end(store: &Store, secret: &str) -> Result<(), StoreError> {
    store.db().with(|c| {
        c.exec(
            "DELETE FROM console_sessions WHERE id_sha256 = ?1",
            &[token_hash(secret).into()],
        )
    })?;
    Ok(())
}
