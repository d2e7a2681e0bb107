import { hasCommitted } from '../../src/agent/target.js';

it.each([
  // After commit:intent the device was RESUMING with its stream verified: only RESUMING -> STOP leaves it.
  ['commit:intent', 'STOP', true],
  ['commit:intent', 'RUNNING_P2P', true],
  ['commit:intent', 'RUNNING', true],
  ['commit:intent', 'RESUMING', false],
  ['commit:intent', 'ERROR', false],
  // So is a target from the moment it is RESUMING (receive:waiting is written once it is): a cancel or
  // reset journals before it moves the device, the state op refuses RESUMING, and the commit (armed,
  // run the moment the stream is verified) writes nothing before its arcs.
  ['receive:waiting', 'STOP', true],
  ['receive:waiting', 'RUNNING', true],
  ['receive:waiting', 'RESUMING', false],
  ['receive:streaming', 'STOP', true],
  ['receive:streaming', 'RESUMING', false],
  ['receive:waiting>interrupted', 'RUNNING', false],
  ['receive:verified', 'STOP', true],
  ['receive:verified', 'RUNNING', true],
  ['receive:verified', 'RESUMING', false],
  ['receive:verified>reset', 'RUNNING', false],
  ['cancel:reset', 'RUNNING', false],
  ['reset:intent', 'RUNNING', false],
  // Steps recorded only after the commit say so whatever the state.
  ['commit:done', 'STOP', true],
  ['state:RUNNING', 'RUNNING', true],
  // A target caught between the arcs of its preparation is in STOP too: not a commit.
  ['receive:prepare', 'STOP', false],
  ['commit:failed', 'ERROR', false],
  [undefined, 'RUNNING', false],
])('journal step %s with the device in %s: committed is %s', (step, state, want) => {
  expect(hasCommitted(step, state)).toBe(want);
});
