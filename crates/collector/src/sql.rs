//! The two databases behind one small interface: SQLite (embedded, the default) and PostgreSQL
//! (for fleets: several stateless collectors on one database). SQL is written once with `?N`
//! placeholders (rewritten to `$N` for PostgreSQL); values are integers, text or NULL.

use std::sync::Mutex;

/// A value bound to or read from a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
    /// NULL (of a text column when bound).
    Null,
}

impl Val {
    /// The integer, or 0.
    pub fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            _ => 0,
        }
    }

    /// The text, if any.
    pub fn text(&self) -> Option<String> {
        match self {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl From<i64> for Val {
    fn from(i: i64) -> Val {
        Val::Int(i)
    }
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val::Text(s.to_string())
    }
}

impl From<String> for Val {
    fn from(s: String) -> Val {
        Val::Text(s)
    }
}

impl From<Option<String>> for Val {
    fn from(s: Option<String>) -> Val {
        s.map_or(Val::Null, Val::Text)
    }
}

impl From<Option<&str>> for Val {
    fn from(s: Option<&str>) -> Val {
        s.map_or(Val::Null, |s| Val::Text(s.to_string()))
    }
}

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL said no.
    #[error("postgres: {0}")]
    Postgres(#[from] postgres::Error),
}

/// Statements run inside a connection or a transaction.
pub trait Exec {
    /// Run a statement; rows changed.
    fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError>;
    /// Run a query; every row.
    fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError>;
    /// Run a query, handing each row to `f` as it is read (`f` may take its values), until `f`
    /// says to stop (false): for results too large to hold at once.
    fn each(
        &mut self,
        sql: &str,
        args: &[Val],
        f: &mut dyn FnMut(&mut [Val]) -> bool,
    ) -> Result<(), DbError>;
}

/// Which database.
pub enum Db {
    /// SQLite: one writing connection and a few reading ones (WAL lets them read while it
    /// writes, so a reviewer's query never holds up ingestion).
    Sqlite {
        /// The writer.
        w: Mutex<rusqlite::Connection>,
        /// Readers.
        r: Vec<Mutex<rusqlite::Connection>>,
    },
    /// PostgreSQL: one writing and one reading connection per collector process (always
    /// `Some` until dropped).
    Postgres {
        /// The writer.
        w: Mutex<Option<Box<postgres::Client>>>,
        /// The reader.
        r: Mutex<Option<Box<postgres::Client>>>,
    },
}

impl Drop for Db {
    /// The synchronous PostgreSQL client runs a runtime of its own to close its connection,
    /// which must not happen on an async thread: there, it is closed on a thread of its own.
    fn drop(&mut self) {
        if let Db::Postgres { w, r } = self {
            let clients: Vec<Box<postgres::Client>> = [w, r]
                .into_iter()
                .filter_map(|m| m.get_mut().ok().and_then(Option::take))
                .collect();
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = std::thread::spawn(move || drop(clients)).join();
            }
        }
    }
}

fn pg(c: &mut Option<Box<postgres::Client>>) -> &mut postgres::Client {
    c.as_mut()
        .expect("the PostgreSQL client is there until the store is dropped")
}

fn pg_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

fn sqlite_args(args: &[Val]) -> Vec<rusqlite::types::Value> {
    args.iter()
        .map(|v| match v {
            Val::Int(i) => rusqlite::types::Value::Integer(*i),
            Val::Text(s) => rusqlite::types::Value::Text(s.clone()),
            Val::Null => rusqlite::types::Value::Null,
        })
        .collect()
}

fn sqlite_exec(c: &rusqlite::Connection, sql: &str, args: &[Val]) -> Result<u64, DbError> {
    let mut st = c.prepare_cached(sql)?;
    Ok(st.execute(rusqlite::params_from_iter(sqlite_args(args)))? as u64)
}

fn sqlite_val(v: rusqlite::types::ValueRef<'_>) -> Val {
    match v {
        rusqlite::types::ValueRef::Integer(x) => Val::Int(x),
        rusqlite::types::ValueRef::Text(t) => Val::Text(match std::str::from_utf8(t) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(t).into_owned(),
        }),
        _ => Val::Null,
    }
}

fn sqlite_each(
    c: &rusqlite::Connection,
    sql: &str,
    args: &[Val],
    f: &mut dyn FnMut(&mut [Val]) -> bool,
) -> Result<(), DbError> {
    let mut st = c.prepare_cached(sql)?;
    let n = st.column_count();
    let mut rows = st.query(rusqlite::params_from_iter(sqlite_args(args)))?;
    let mut row = Vec::with_capacity(n);
    while let Some(r) = rows.next()? {
        row.clear();
        for i in 0..n {
            row.push(sqlite_val(r.get_ref(i)?));
        }
        if !f(&mut row) {
            break;
        }
    }
    Ok(())
}

fn sqlite_rows(
    c: &rusqlite::Connection,
    sql: &str,
    args: &[Val],
) -> Result<Vec<Vec<Val>>, DbError> {
    let mut out = Vec::new();
    sqlite_each(c, sql, args, &mut |r| {
        out.push(r.to_vec());
        true
    })?;
    Ok(out)
}

fn pg_params(args: &[Val]) -> Vec<Box<dyn postgres::types::ToSql + Sync>> {
    args.iter()
        .map(|v| -> Box<dyn postgres::types::ToSql + Sync> {
            match v {
                Val::Int(i) => Box::new(*i),
                Val::Text(s) => Box::new(s.clone()),
                Val::Null => Box::new(Option::<String>::None),
            }
        })
        .collect()
}

fn pg_row(r: &postgres::Row) -> Vec<Val> {
    (0..r.len())
        .map(|i| {
            if let Ok(v) = r.try_get::<_, Option<i64>>(i) {
                return v.map_or(Val::Null, Val::Int);
            }
            if let Ok(v) = r.try_get::<_, Option<String>>(i) {
                return v.map_or(Val::Null, Val::Text);
            }
            Val::Null
        })
        .collect()
}

macro_rules! pg_exec {
    ($c:ty) => {
        impl Exec for $c {
            fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
                let p = pg_params(args);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    p.iter().map(|b| b.as_ref()).collect();
                Ok(self.execute(pg_sql(sql).as_str(), &refs)?)
            }
            fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
                let p = pg_params(args);
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    p.iter().map(|b| b.as_ref()).collect();
                Ok(self
                    .query(pg_sql(sql).as_str(), &refs)?
                    .iter()
                    .map(pg_row)
                    .collect())
            }
            fn each(
                &mut self,
                sql: &str,
                args: &[Val],
                f: &mut dyn FnMut(&mut [Val]) -> bool,
            ) -> Result<(), DbError> {
                use postgres::fallible_iterator::FallibleIterator;
                let p = pg_params(args);
                let mut it = self.query_raw(
                    pg_sql(sql).as_str(),
                    p.iter()
                        .map(|b| b.as_ref() as &(dyn postgres::types::ToSql + Sync)),
                )?;
                while let Some(r) = it.next()? {
                    if !f(&mut pg_row(&r)) {
                        break;
                    }
                }
                Ok(())
            }
        }
    };
}

pg_exec!(postgres::Client);
pg_exec!(postgres::Transaction<'_>);

macro_rules! sqlite_exec {
    ($c:ty) => {
        impl Exec for $c {
            fn exec(&mut self, sql: &str, args: &[Val]) -> Result<u64, DbError> {
                sqlite_exec(self, sql, args)
            }
            fn rows(&mut self, sql: &str, args: &[Val]) -> Result<Vec<Vec<Val>>, DbError> {
                sqlite_rows(self, sql, args)
            }
            fn each(
                &mut self,
                sql: &str,
                args: &[Val],
                f: &mut dyn FnMut(&mut [Val]) -> bool,
            ) -> Result<(), DbError> {
                sqlite_each(self, sql, args, f)
            }
        }
    };
}

sqlite_exec!(rusqlite::Connection);
sqlite_exec!(rusqlite::Transaction<'_>);

impl Db {
    /// True for PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres { .. })
    }

    /// Run `f` on the writing connection, outside a transaction.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut dyn Exec) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match self {
            Db::Sqlite { w, .. } => f(&mut *w.lock().expect("db poisoned")),
            Db::Postgres { w, .. } => f(pg(&mut w.lock().expect("db poisoned"))),
        }
    }

    /// Run `f` on a reading connection: it sees what was committed, and waits for no writer.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut dyn Exec) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match self {
            Db::Sqlite { r, .. } => {
                // A free reader if there is one, else wait for the first.
                for c in r {
                    if let Ok(mut c) = c.try_lock() {
                        return f(&mut *c);
                    }
                }
                f(&mut *r[0].lock().expect("db poisoned"))
            }
            Db::Postgres { r, .. } => f(pg(&mut r.lock().expect("db poisoned"))),
        }
    }

    /// Run `f` in one transaction on the writing connection, committed when it returns `Ok`
    /// and rolled back when it returns an error.
    pub fn tx<T, E: From<DbError>>(
        &self,
        f: impl FnOnce(&mut dyn Exec) -> Result<T, E>,
    ) -> Result<T, E> {
        match self {
            Db::Sqlite { w, .. } => {
                let mut c = w.lock().expect("db poisoned");
                // IMMEDIATE: the write lock is taken at BEGIN, where the busy timeout applies. A
                // deferred transaction that reads and then writes while another connection (a
                // second collector, an admin command) committed gets SQLITE_BUSY at once,
                // without waiting.
                let mut tx = c
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(DbError::from)?;
                let out = f(&mut tx)?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
            Db::Postgres { w, .. } => {
                let mut c = w.lock().expect("db poisoned");
                let mut tx = pg(&mut c).transaction().map_err(DbError::from)?;
                let out = f(&mut tx)?;
                tx.commit().map_err(DbError::from)?;
                Ok(out)
            }
        }
    }
}
