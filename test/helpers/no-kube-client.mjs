// Loaded with `node --import`: any import of the Kubernetes client fails, so a test can show that a
// command (the agent without a kubeconfig) never loads it.
import { register } from 'node:module';

register('data:text/javascript,' + encodeURIComponent(`
export async function resolve(specifier, context, next) {
  if (specifier === '@kubernetes/client-node') throw new Error('the Kubernetes client was imported');
  return next(specifier, context);
}`));
