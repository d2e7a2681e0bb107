// Loaded with `node --import`: the native addons fail to load, as on a platform their packages
// publish no build for, so a test can show what the agent does without them.
import { registerHooks } from 'node:module';

registerHooks({
  resolve(specifier, context, next) {
    if (specifier === '@napi-rs/blake-hash' || specifier === '@node-rs/crc32') throw new Error(`Cannot find native binding for ${specifier} (test)`);
    return next(specifier, context);
  },
});
