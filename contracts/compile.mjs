// Compile Solidity with solc-js (the npm package `solc`, no compiler download).
//
// Reads a solc standard-JSON input on stdin and writes solc's standard-JSON output on stdout,
// wrapped as {"solcVersion": "...", "output": {...}}. Exit code 0 even when the output lists
// compile errors: the caller reads them from output.errors.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const require = createRequire(import.meta.url);
const solc = require('solc');

const input = readFileSync(0, 'utf8');
const output = JSON.parse(solc.compile(input));
process.stdout.write(JSON.stringify({ solcVersion: solc.version(), output }));
