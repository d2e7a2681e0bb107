/**
 * The pure parts of devmig as pods, without root or a kubelet (npm run test:cluster runs the real
 * thing): what each node's containerd, CNI and kubelet are told, and what helm is given.
 */
import { parse } from 'yaml';
import { installValues } from '../../src/local/pods/cluster.js';
import { DEVICE_ROOT, podsNode, RUN_ROOT } from '../../src/local/pods/layout.js';
import { cniConfig, containerdConfig, kubeletConfig } from '../../src/local/pods/node.js';

describe('a node of the pods environment', () => {
  const n = podsNode(2);

  it('owns its names and addresses: bridge, subnet, node address, cgroup root, agent state', () => {
    expect(n).toMatchObject({ name: 'node-2', bridge: 'devmig-br2', subnet: '10.244.2.0/24', ip: '10.244.2.1', cgroupRoot: '/devmig-node-2', simDir: `${DEVICE_ROOT}/node-2/sim` });
    // Unix sockets: a path of more than 107 bytes cannot be bound; the kubelet's live under its root dir.
    expect(n.socket.startsWith(`${RUN_ROOT}/`)).toBe(true);
    expect(`${n.lib}/kubelet/pod-resources/kubelet.sock.tmp`.length).toBeLessThan(108);
  });

  it('containerd: its own root, state and socket, runc with cgroupfs, and what sandboxes need here', () => {
    const t = containerdConfig(n);
    expect(t).toContain(`address = "${n.socket}"`);
    expect(t).toContain('restrict_oom_score_adj = true');
    expect(t).toContain('SystemdCgroup = false');
    expect(t).toMatch(/sandbox_image = "devmig\.local\/pause:[\w.]+"/);
    expect(t).toContain(`conf_dir = "${n.lib}/cni"`);
  });

  it('CNI: the node\'s own bridge and subnet, no masquerade (the bridges route to each other)', () => {
    const c = JSON.parse(cniConfig(n)) as { plugins: Array<{ type: string; bridge: string; ipMasq: boolean; ipam: { ranges: Array<Array<{ subnet: string; gateway: string }>> } }> };
    expect(c.plugins[0]).toMatchObject({ type: 'bridge', bridge: 'devmig-br2', ipMasq: false, ipam: { ranges: [[{ subnet: '10.244.2.0/24', gateway: '10.244.2.1' }]] } });
  });

  it('kubelet: on the node\'s address, its own cgroup root and runtime, the API server\'s client certificate checked', () => {
    const k = parse(kubeletConfig(n, '/ca.crt')) as Record<string, unknown>;
    expect(k).toMatchObject({
      address: '10.244.2.1', cgroupDriver: 'cgroupfs', cgroupRoot: '/devmig-node-2', failCgroupV1: false, failSwapOn: false,
      containerRuntimeEndpoint: `unix://${n.socket}`, readOnlyPort: 0,
      authentication: { anonymous: { enabled: false }, webhook: { enabled: true }, x509: { clientCAFile: '/ca.crt' } }, authorization: { mode: 'Webhook' },
    });
  });

  it('helm values: the built image, never pulled; simulated devices on the node; two controller replicas', () => {
    const v = installValues({ dir: '.', nodes: 2, devices: 3, stateSize: '8Mi' }, { devmig: { name: 'devmig.local/devmig:abc', tag: 'abc', archive: '', cached: true, seconds: 0, size: '' } });
    const set = Object.fromEntries(v.filter((_, i) => i % 2 === 1).map((kv) => kv.split('=') as [string, string]));
    expect(set).toMatchObject({
      'image.repository': 'devmig.local/devmig', 'image.tag': 'abc', 'image.pullPolicy': 'Never', 'agent.simulated.onNode': 'true',
      'agent.simulated.devices': '3', 'agent.simulated.stateSize': '8Mi', 'agent.stateDir': DEVICE_ROOT, 'controller.replicas': '2',
    });
  });
});
