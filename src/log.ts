// Structured logging: one line per event, `time level event key=value ...`, so a grep for `session=12` or
// `node=1` follows one session or one node through the log. Values with spaces are quoted.

export type LogLevel = 'debug' | 'info' | 'warning' | 'error' | 'fatal';

const levelRank: Record<LogLevel, number> = { debug: 0, info: 1, warning: 2, error: 3, fatal: 4 };

export type LogFields = Record<string, string | number | boolean | null | undefined>;

export interface LogSink {
  write(line: string): void;
}

let minLevel: LogLevel = 'info';
let sink: LogSink = { write: (line) => process.stderr.write(line) };

export function configureLog(options: { minLevel?: LogLevel; sink?: LogSink }): void {
  if (options.minLevel) minLevel = options.minLevel;
  if (options.sink) sink = options.sink;
}

export function isLogLevel(value: string): value is LogLevel {
  return value in levelRank;
}

function formatValue(value: string | number | boolean | null): string {
  if (value === null) return 'null';
  const text = String(value);
  return /^[^\s"=]+$/.test(text) ? text : JSON.stringify(text);
}

export function log(level: LogLevel, event: string, fields: LogFields = {}): void {
  if (levelRank[level] < levelRank[minLevel]) return;
  let line = `${new Date().toISOString()} ${level.toUpperCase()} ${event}`;
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    line += ` ${key}=${formatValue(value)}`;
  }
  sink.write(line + '\n');
}
