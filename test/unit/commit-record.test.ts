import { hasCommitted } from '../../src/agent/target.js';

it.each([
  // After commit:intent the device was RESUMING with its stream verified: only RESUMING -> STOP leaves it.
  ['commit:intent', 'STOP', true],
  ['commit:intent', 'RUNNING_P2P', true],
  ['commit:intent', 'RUNNING', true],
  ['commit:intent', 'RESUMING', false],
  ['commit:intent', 'ERROR', false],
  // Steps recorded only after the commit say so whatever the state.
  ['commit:done', 'STOP', true],
  ['state:RUNNING', 'RUNNING', true],
  // A target caught between the arcs of its preparation is in STOP too: not a commit.
  ['receive:prepare', 'STOP', false],
  ['receive:verified', 'STOP', false],
  ['commit:failed', 'ERROR', false],
  [undefined, 'RUNNING', false],
])('journal step %s with the device in %s: committed is %s', (step, state, want) => {
  expect(hasCommitted(step, state)).toBe(want);
});
