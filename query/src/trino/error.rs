//! Query failures as Trino clients expect them: a `QueryResults` with `error` (name, code and
//! type from Trino's error-code table), carried in a 200 reply.

use serde_json::{Value, json};

use super::values::{Progress, stats};
use crate::Error;

/// An error of Trino's error-code table: its name, number and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub name: &'static str,
    pub code: i64,
    pub kind: ErrorType,
}

/// Whose the failure is, as Trino classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    User,
    InsufficientResources,
    Internal,
}

impl ErrorType {
    fn as_str(self) -> &'static str {
        match self {
            ErrorType::User => "USER_ERROR",
            ErrorType::InsufficientResources => "INSUFFICIENT_RESOURCES",
            ErrorType::Internal => "INTERNAL_ERROR",
        }
    }
}

const fn user(name: &'static str, code: i64) -> ErrorCode {
    ErrorCode {
        name,
        code,
        kind: ErrorType::User,
    }
}

const fn resources(name: &'static str, code: i64) -> ErrorCode {
    ErrorCode {
        name,
        code,
        kind: ErrorType::InsufficientResources,
    }
}

// Trino's codes (io.trino.spi.StandardErrorCode): user errors from 0, resource errors from
// 0x2_0000, internal errors from 0x1_0000.
pub const GENERIC_USER_ERROR: ErrorCode = user("GENERIC_USER_ERROR", 0);
pub const SYNTAX_ERROR: ErrorCode = user("SYNTAX_ERROR", 1);
pub const PERMISSION_DENIED: ErrorCode = user("PERMISSION_DENIED", 4);
pub const NOT_FOUND: ErrorCode = user("NOT_FOUND", 5);
pub const INVALID_FUNCTION_ARGUMENT: ErrorCode = user("INVALID_FUNCTION_ARGUMENT", 7);
pub const DIVISION_BY_ZERO: ErrorCode = user("DIVISION_BY_ZERO", 8);
pub const INVALID_CAST_ARGUMENT: ErrorCode = user("INVALID_CAST_ARGUMENT", 9);
pub const NOT_SUPPORTED: ErrorCode = user("NOT_SUPPORTED", 13);
pub const CATALOG_NOT_FOUND: ErrorCode = user("CATALOG_NOT_FOUND", 44);
pub const SCHEMA_NOT_FOUND: ErrorCode = user("SCHEMA_NOT_FOUND", 45);
pub const TABLE_NOT_FOUND: ErrorCode = user("TABLE_NOT_FOUND", 46);
pub const QUERY_TEXT_TOO_LARGE: ErrorCode = user("QUERY_TEXT_TOO_LARGE", 131_080);
pub const GENERIC_INTERNAL_ERROR: ErrorCode = ErrorCode {
    name: "GENERIC_INTERNAL_ERROR",
    code: 65_536,
    kind: ErrorType::Internal,
};
/// Floe's name for a tenant quota's refusal, on Trino's generic resource code.
pub const QUOTA_EXCEEDED: ErrorCode = resources("QUOTA_EXCEEDED", 131_072);
pub const QUERY_QUEUE_FULL: ErrorCode = resources("QUERY_QUEUE_FULL", 131_074);
pub const EXCEEDED_TIME_LIMIT: ErrorCode = resources("EXCEEDED_TIME_LIMIT", 131_075);
pub const EXCEEDED_SPILL_LIMIT: ErrorCode = resources("EXCEEDED_SPILL_LIMIT", 131_078);
pub const SERVER_RESOURCES_EXHAUSTED: ErrorCode = resources("SERVER_RESOURCES_EXHAUSTED", 131_076);
pub const EXCEEDED_MEMORY_LIMIT: ErrorCode = resources("EXCEEDED_MEMORY_LIMIT", 131_079);
pub const EXCEEDED_ROW_LIMIT: ErrorCode = resources("EXCEEDED_ROW_LIMIT", 131_083);

/// A Trino-style failure.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryError {
    pub code: ErrorCode,
    pub message: String,
}

impl QueryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        QueryError {
            code,
            message: message.into(),
        }
    }

    /// How a failed query is reported: by its kind, never with internals.
    pub fn from_query(e: &Error) -> Self {
        let text = e.to_string();
        match e {
            Error::Denied(m) => return QueryError::new(PERMISSION_DENIED, m.clone()),
            Error::NotSupported(m) => return QueryError::new(NOT_SUPPORTED, m.clone()),
            Error::Syntax(m) => return QueryError::new(SYNTAX_ERROR, m.clone()),
            Error::InvalidArgument(m) => return QueryError::new(GENERIC_USER_ERROR, m.clone()),
            Error::TableNotFound(_) => return QueryError::new(TABLE_NOT_FOUND, text),
            Error::DataFusion(df) => {
                use arrow::error::ArrowError as A;
                use datafusion::error::DataFusionError as D;
                match df.find_root() {
                    D::ResourcesExhausted(m) if crate::spill::exceeded(m) => {
                        return QueryError::new(
                            EXCEEDED_SPILL_LIMIT,
                            "Query exceeded the spill limit: the running queries have spilled \
                             as much to disk as query.spill_total_bytes allows; it may pass \
                             when fewer of them run",
                        );
                    }
                    D::ResourcesExhausted(_) => {
                        return QueryError::new(EXCEEDED_MEMORY_LIMIT, text);
                    }
                    // Raised by functions on bad input (e.g. an invalid JSON path or unit).
                    D::Execution(m) => {
                        return QueryError::new(INVALID_FUNCTION_ARGUMENT, m.clone());
                    }
                    D::ArrowError(a, _) => match a.as_ref() {
                        A::DivideByZero => {
                            return QueryError::new(DIVISION_BY_ZERO, a.to_string());
                        }
                        A::CastError(_) | A::ParseError(_) => {
                            return QueryError::new(INVALID_CAST_ARGUMENT, a.to_string());
                        }
                        A::ComputeError(_) | A::InvalidArgumentError(_) => {
                            return QueryError::new(INVALID_FUNCTION_ARGUMENT, a.to_string());
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            _ => {}
        }
        match e.kind() {
            floe_catalog::ErrorKind::InvalidInput => QueryError::new(SYNTAX_ERROR, text),
            floe_catalog::ErrorKind::NotFound => QueryError::new(TABLE_NOT_FOUND, text),
            _ => {
                tracing::warn!(error = %e, "query failed");
                QueryError::new(GENERIC_INTERNAL_ERROR, "internal error")
            }
        }
    }

    /// The `QueryResults` of a failed query, with its figures so far.
    pub fn into_results(self, id: &str, base: &str, progress: &Progress) -> Value {
        json!({
            "id": id,
            "infoUri": super::info_uri(base, id),
            "stats": stats("FAILED", progress),
            "error": {
                "message": self.message,
                "errorCode": self.code.code,
                "errorName": self.code.name,
                "errorType": self.code.kind.as_str(),
                "failureInfo": {
                    "type": self.code.name, "message": self.message, "suppressed": [], "stack": [],
                },
            },
            "warnings": [],
        })
    }
}

/// How a failed query is reported to Trino clients: `ERROR_NAME: message`.
pub fn error_text(e: &Error) -> String {
    let q = QueryError::from_query(e);
    format!("{}: {}", q.code.name, q.message)
}

pub fn time_limit(secs: u64) -> QueryError {
    QueryError::new(
        EXCEEDED_TIME_LIMIT,
        format!("Query exceeded the maximum execution time of {secs}s"),
    )
}
