#!/usr/bin/env node
// Entry point for the `devmig` executable: the compiled CLI lives in dist/ (npm run build).
import { main } from '../dist/cli/main.js';

const code = await main(process.argv.slice(2));
process.exitCode = code;
// A finished command does not wait for idle keep-alive connections of the Kubernetes client; the
// grace lets stdout drain. Long-running commands (agent, controller) return only when stopped.
setTimeout(() => process.exit(code), 200).unref();
