package retry

// SQLSTATE codes that pgsidecar sends or acts on, named as in PostgreSQL's errcodes.txt. They
// are defined here, once, next to the classification that reads them.
const (
	CodeFeatureNotSupported          = "0A000"
	CodeConnectionFailure            = "08006"
	CodeProtocolViolation            = "08P01"
	CodeReadOnlySQLTransaction       = "25006"
	CodeIdleInTransactionTimeout     = "25P03"
	CodeInvalidStatementName         = "26000" // invalid_sql_statement_name: no such prepared statement
	CodeInvalidAuthorization         = "28000"
	CodeSyntaxError                  = "42601"
	CodeInsufficientPrivilege        = "42501"
	CodeUndefinedObject              = "42704"
	CodeInvalidParameterValue        = "22023"
	CodeObjectNotInPrerequisiteState = "55000"
	CodeConfigFileError              = "F0000" // PgBouncer's code for a failed RELOAD
	CodeInvalidPassword              = "28P01"
	CodeInvalidCatalogName           = "3D000"
	CodeSerializationFailure         = "40001"
	CodeDeadlockDetected             = "40P01"
	CodeNameTooLong                  = "42622"
	CodeDuplicatePreparedStmt        = "42P05"
	CodeTooManyConnections           = "53300"
	CodeConfigurationLimitExceeded   = "53400"
	CodeProgramLimitExceeded         = "54000"
	CodeQueryCanceled                = "57014"
	CodeAdminShutdown                = "57P01"
	CodeCrashShutdown                = "57P02"
	CodeCannotConnectNow             = "57P03"
	CodeIdleSessionTimeout           = "57P05"
	CodeInternalError                = "XX000"
)
