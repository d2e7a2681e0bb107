// Tests run as native ES modules (the package is "type": "module"); @swc/jest strips types only.
/** @type {import('jest').Config} */
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: {
    '^.+\\.ts$': ['@swc/jest', { jsc: { parser: { syntax: 'typescript' }, target: 'es2023' }, module: { type: 'es6' } }],
  },
  moduleNameMapper: { '^(\\.{1,2}/.*)\\.js$': '$1' },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  // The fault matrix runs on its own (npm run test:faults): it kills processes and needs the machine.
  // The load run (npm run test:load: 20 agents, 200 migrations) too, and the real kernel's tests.
  testPathIgnorePatterns: [
    ...(process.env.DEVMIG_FAULTS ? [] : ['<rootDir>/test/faults/']),
    ...(process.env.DEVMIG_LOAD ? [] : ['<rootDir>/test/load/']),
    // The real kernel's tests (npm run test:kernel): test/kernel/guest runs inside the QEMU guest,
    // test/kernel/local on the host against agents in the guest.
    ...(process.env.DEVMIG_KERNEL_TESTS ? [] : ['<rootDir>/test/kernel/']),
    // Real pods (npm run test:cluster): root, containerd and kubelets; it brings its environment up first.
    ...(process.env.DEVMIG_CLUSTER ? [] : ['<rootDir>/test/cluster/']),
  ],
  testTimeout: 60000,
  // Integration tests start real processes and servers; two workers match the 2-core CI machine.
  maxWorkers: 2,
};
