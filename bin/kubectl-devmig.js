#!/usr/bin/env node
// `kubectl devmig ...`: kubectl finds this executable on the PATH as a plugin.
import { pluginMain } from '../dist/cli/plugin.js';

const code = await pluginMain(process.argv.slice(2));
process.exitCode = code;
setTimeout(() => process.exit(code), 200).unref();
