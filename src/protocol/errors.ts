// Errors that reach a client as an ErrorResponse. Each carries PostgreSQL's fields so it maps one-to-one onto
// the wire message; messages are lowercase and name the object involved, as PostgreSQL's own are.

export const SqlState = {
  protocolViolation: '08P01',
  connectionFailure: '08006',
  transactionResolutionUnknown: '08007',
  connectionException: '08000',
  invalidAuthorizationSpecification: '28000',
  invalidPassword: '28P01',
  featureNotSupported: '0A000',
  invalidSqlStatementName: '26000',
  invalidCursorName: '34000',
  syntaxError: '42601',
  queryCanceled: '57014',
  lockNotAvailable: '55P03',
  adminShutdown: '57P01',
  cannotConnectNow: '57P03',
  tooManyConnections: '53300',
  programLimitExceeded: '54000',
  internalError: 'XX000',
  invalidParameterValue: '22023',
  configFileError: 'F0000',
  objectNotInPrerequisiteState: '55000',
  dataCorrupted: 'XX001',
  transactionRollback: '40000',
} as const;

export type Severity = 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE' | 'DEBUG' | 'INFO' | 'LOG';

export interface PgErrorFields {
  severity?: Severity;
  code: string;
  message: string;
  detail?: string;
  hint?: string;
  position?: number;
}

/** An error destined for a client: thrown inside the proxy, written as ErrorResponse by the session. */
export class PgError extends Error {
  readonly severity: Severity;
  readonly code: string;
  readonly detail?: string;
  readonly hint?: string;
  readonly position?: number;

  constructor(fields: PgErrorFields) {
    super(fields.message);
    this.name = 'PgError';
    this.severity = fields.severity ?? 'ERROR';
    this.code = fields.code;
    this.detail = fields.detail;
    this.hint = fields.hint;
    this.position = fields.position;
  }
}

export function protocolViolation(message: string, detail?: string): PgError {
  return new PgError({ severity: 'FATAL', code: SqlState.protocolViolation, message, detail });
}
