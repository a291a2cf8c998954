// Message type bytes of protocol 3.0, named once so that no other file compares against a bare number.

/** Sent by clients. */
export const enum FrontendCode {
  bind = 0x42, // B
  close = 0x43, // C
  describe = 0x44, // D
  execute = 0x45, // E
  functionCall = 0x46, // F
  flush = 0x48, // H
  parse = 0x50, // P
  query = 0x51, // Q
  sync = 0x53, // S
  terminate = 0x58, // X
  copyData = 0x64, // d
  copyDone = 0x63, // c
  copyFail = 0x66, // f
  password = 0x70, // p (PasswordMessage, SASLInitialResponse, SASLResponse)
}

/** Sent by servers. */
export const enum BackendCode {
  parseComplete = 0x31, // 1
  bindComplete = 0x32, // 2
  closeComplete = 0x33, // 3
  notificationResponse = 0x41, // A
  commandComplete = 0x43, // C
  dataRow = 0x44, // D
  errorResponse = 0x45, // E
  copyInResponse = 0x47, // G
  copyOutResponse = 0x48, // H
  emptyQueryResponse = 0x49, // I
  backendKeyData = 0x4b, // K
  noticeResponse = 0x4e, // N
  authentication = 0x52, // R
  parameterStatus = 0x53, // S
  rowDescription = 0x54, // T
  functionCallResponse = 0x56, // V
  copyBothResponse = 0x57, // W
  readyForQuery = 0x5a, // Z
  copyDone = 0x63, // c
  copyData = 0x64, // d
  noData = 0x6e, // n
  portalSuspended = 0x73, // s
  parameterDescription = 0x74, // t
  negotiateProtocolVersion = 0x76, // v
}

export type TransactionStatus = 'I' | 'T' | 'E';
