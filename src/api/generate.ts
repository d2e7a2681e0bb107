/** `npm run generate`: writes crds/ and the API reference (docs/api.md) from the zod declarations. */
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { crdFiles } from './crd.js';
import { apiReference } from './reference.js';

// The chart carries the same CRDs (Helm installs crds/ once and never upgrades them; see its README).
for (const at of ['crds/', 'charts/devmig/crds/']) {
  const dir = fileURLToPath(new URL(`../../${at}`, import.meta.url));
  await mkdir(dir, { recursive: true });
  for (const [file, text] of Object.entries(crdFiles())) {
    await writeFile(`${dir}${file}`, text);
    process.stdout.write(`wrote ${at}${file}\n`);
  }
}
const docs = fileURLToPath(new URL('../../docs/', import.meta.url));
await mkdir(docs, { recursive: true });
await writeFile(`${docs}api.md`, apiReference());
process.stdout.write('wrote docs/api.md\n');
