/** What devmig makes names its release's ClusterRole as owner (src/kube/owner.ts). */
import { withOwner } from '../../src/kube/owner.js';

it('an owner is added once, beside the owners an object has', () => {
  const owner = { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', name: 'devmig-agent', uid: 'u1' };
  const other = { ...owner, name: 'x', uid: 'u0' };
  expect(withOwner(undefined, owner)).toEqual([owner]);
  expect(withOwner([other], owner)).toEqual([other, owner]);
  expect(withOwner([other, owner], owner)).toBeUndefined();
});
