/** `npm run generate`: writes crds/ from the zod declarations. */
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { crdFiles } from './crd.js';

const dir = fileURLToPath(new URL('../../crds/', import.meta.url));
await mkdir(dir, { recursive: true });
for (const [file, text] of Object.entries(crdFiles())) {
  await writeFile(`${dir}${file}`, text);
  process.stdout.write(`wrote crds/${file}\n`);
}
