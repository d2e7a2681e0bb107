/** `npm run render`: writes deploy/ from the Helm chart (plain manifests for kubectl and GitOps). */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DEPLOY, render, RENDERINGS } from '../local/helm.js';

for (const file of Object.keys(RENDERINGS)) {
  await writeFile(join(DEPLOY, file), await render(file));
  process.stdout.write(`wrote deploy/${file}\n`);
}
