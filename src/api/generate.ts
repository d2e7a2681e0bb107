/** `npm run generate`: writes crds/ and the API reference (docs/api.md) from the zod declarations. */
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { crdFiles } from './crd.js';
import { apiReference } from './reference.js';

const dir = fileURLToPath(new URL('../../crds/', import.meta.url));
await mkdir(dir, { recursive: true });
for (const [file, text] of Object.entries(crdFiles())) {
  await writeFile(`${dir}${file}`, text);
  process.stdout.write(`wrote crds/${file}\n`);
}
const docs = fileURLToPath(new URL('../../docs/', import.meta.url));
await mkdir(docs, { recursive: true });
await writeFile(`${docs}api.md`, apiReference());
process.stdout.write('wrote docs/api.md\n');
