#!/usr/bin/env node
// Runs every compiled test file with node's test runner. Files run two at a time (the machine's cores); each
// test cluster picks its own free ports, so files never fight over them. Extra arguments select files by name.
'use strict';
const { readdirSync, statSync } = require('node:fs');
const { join } = require('node:path');
const { spawnSync } = require('node:child_process');

function collect(dir) {
  const out = [];
  for (const entry of readdirSync(dir)) {
    const path = join(dir, entry);
    if (statSync(path).isDirectory()) out.push(...collect(path));
    else if (entry.endsWith('.test.js')) out.push(path);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = collect(join(__dirname, '..', 'dist', 'test'))
  .filter((file) => filters.length === 0 || filters.some((f) => file.includes(f)))
  .sort();
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}
// Every statement the proxy relays by a remembered shape is parsed anyway and checked against it
// (src/session/relay-profiles.ts), so that the whole suite runs with the shape cache on and verified.
const env = { ...process.env, PARAPOOL_VERIFY_RELAY_PROFILES: process.env.PARAPOOL_VERIFY_RELAY_PROFILES ?? '1' };
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-timeout=600000', ...files], { stdio: 'inherit', env });
process.exit(result.status ?? 1);
