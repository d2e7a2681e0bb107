/**
 * For child processes that run the TypeScript sources directly (node --experimental-transform-types
 * --import this file): the sources import './x.js' (NodeNext style), which exists only as './x.ts'
 * until a build, so such specifiers are resolved to the .ts file when it is there.
 */
import { existsSync } from 'node:fs';
import { registerHooks } from 'node:module';
import { fileURLToPath } from 'node:url';

registerHooks({
  resolve(specifier, context, nextResolve) {
    if (/^\.\.?\//.test(specifier) && specifier.endsWith('.js') && context.parentURL) {
      const ts = new URL(specifier.replace(/\.js$/, '.ts'), context.parentURL);
      if (existsSync(fileURLToPath(ts))) return nextResolve(ts.href, context);
    }
    return nextResolve(specifier, context);
  },
});
