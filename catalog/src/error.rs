//! The catalog's error type: every error knows its kind, and whether retrying can help.

use std::fmt;

/// What went wrong, in terms a caller can act on. The HTTP layer maps kinds to status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something invalid (bad tenant id, bad flag value).
    InvalidInput,
    /// No credentials, or credentials that do not verify (forged, expired).
    Unauthenticated,
    /// Valid credentials, but not allowed to do this.
    PermissionDenied,
    /// The thing named does not exist.
    NotFound,
    /// The thing already exists.
    AlreadyExists,
    /// Someone else committed first; reload and retry.
    CommitConflict,
    /// A dependency (disk, database, object store) failed; a retry may help.
    Unavailable,
    /// A bug or corrupt state; retrying will not help.
    Internal,
}

impl ErrorKind {
    /// Whether the same request may succeed if simply retried later.
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::CommitConflict | ErrorKind::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::CommitConflict => "commit_conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        };
        f.write_str(s)
    }
}

/// Errors of the catalog crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Invalid { message: String },

    #[error("{message}")]
    Unauthenticated { message: String },

    #[error("{message}")]
    Forbidden { message: String },

    #[error("{what} not found")]
    NotFound { what: String },

    #[error("{what} already exists")]
    AlreadyExists { what: String },

    /// The tenant was deleted (and maybe created again): state of the incarnation named here
    /// must be dropped, never applied to a newer one.
    #[error("tenant {tenant} (incarnation {incarnation}) no longer exists")]
    IncarnationGone { tenant: String, incarnation: String },

    #[error("commit conflict on {table}: the table changed since it was loaded")]
    CommitConflict { table: String },

    #[error("catalog database error during {context}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },

    #[error("iceberg error during {context}")]
    Iceberg {
        context: String,
        #[source]
        source: Box<iceberg::Error>,
    },

    #[error("i/o error on {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("configuration error: {message}")]
    Config { message: String },

    #[error("object storage: {message}")]
    Storage { message: String },

    /// Something this needs could not be had just now (a read that failed recently and is not
    /// tried again yet): a retry later may succeed.
    #[error("{what} unavailable: {why}; retry later")]
    Unavailable { what: String, why: String },

    #[error("internal error: {message}")]
    Internal { message: String },

    /// Another caller's error, told again to those that waited for the same read (its kind
    /// and message; the error itself went to that caller).
    #[error("{message}")]
    Again { kind: ErrorKind, message: String },

    /// A commit's metadata swap failed in a way that leaves its outcome unknown: the database
    /// may have applied it and lost only its reply (or apply a timed-out one later). The files
    /// the commit would have added must not be deleted; reloading the table tells.
    #[error(
        "the commit of {table} may or may not have landed (its metadata swap failed: {source}); reload the table to know"
    )]
    OutcomeUnknown {
        table: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } | Error::Config { .. } => ErrorKind::InvalidInput,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::Forbidden { .. } => ErrorKind::PermissionDenied,
            Error::NotFound { .. } | Error::IncarnationGone { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::CommitConflict { .. } => ErrorKind::CommitConflict,
            Error::Database { source, .. } => match source {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::Io(_)
                | sqlx::Error::PoolClosed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed => ErrorKind::Unavailable,
                // SQLite busy; PostgreSQL connection trouble (08), shutting down or starting
                // (57), out of resources (53), serialisation failure or deadlock (40).
                sqlx::Error::Database(db)
                    if db.message().contains("locked")
                        || db.code().is_some_and(|c| {
                            ["08", "57", "53", "40"].iter().any(|p| c.starts_with(p))
                        }) =>
                {
                    ErrorKind::Unavailable
                }
                // Another transaction inserted the same key between this one's read and its
                // write (two registrations of one version, two creations of one tenant): done
                // again, the request sees the row and answers as it should.
                sqlx::Error::Database(db) if db.is_unique_violation() => ErrorKind::CommitConflict,
                // SQLite: a transaction that read before another one committed a write cannot
                // write itself (SQLITE_BUSY_SNAPSHOT); done again, it reads the new state.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("517") => {
                    ErrorKind::CommitConflict
                }
                _ => ErrorKind::Internal,
            },
            // Iceberg errors here come from reading and writing table files: storage trouble,
            // which a later retry may get past.
            Error::Iceberg { source, .. } => match source.kind() {
                iceberg::ErrorKind::CatalogCommitConflicts => ErrorKind::CommitConflict,
                _ => ErrorKind::Unavailable,
            },
            Error::Io { .. } | Error::Storage { .. } | Error::Unavailable { .. } => {
                ErrorKind::Unavailable
            }
            Error::Internal { .. } => ErrorKind::Internal,
            Error::Again { kind, .. } => *kind,
            Error::OutcomeUnknown { source, .. } => source.kind(),
        }
    }

    /// Whether this is a commit that may have landed all the same ([`Error::OutcomeUnknown`]).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    pub fn retryable(&self) -> bool {
        self.kind().retryable()
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid {
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
        }
    }

    /// A failed metadata swap of `table`, whose outcome is unknown.
    pub(crate) fn swap(table: &str) -> impl FnOnce(sqlx::Error) -> Self {
        let table = table.to_string();
        move |source| Error::OutcomeUnknown {
            table,
            source: Box::new(Error::Database {
                context: "metadata swap".into(),
                source,
            }),
        }
    }

    pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Error::Database { context, source }
    }

    pub(crate) fn ice(context: impl Into<String>) -> impl FnOnce(iceberg::Error) -> Self {
        let context = context.into();
        move |source| Error::Iceberg {
            context,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
