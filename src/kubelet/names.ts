/** Names the kubelet's APIs use, checked as the kubelet checks them. */

const dnsSubdomain = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const qualifiedName = /^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;

/**
 * A device plugin's resource name: an extended resource, vendor.example/name, outside the
 * kubernetes.io domains (which are the kubelet's own).
 */
export function isExtendedResourceName(name: string): boolean {
  const slash = name.indexOf('/');
  if (slash < 0) return false;
  const domain = name.slice(0, slash);
  if (domain === 'kubernetes.io' || domain.endsWith('.kubernetes.io')) return false;
  return dnsSubdomain.test(domain) && qualifiedName.test(name.slice(slash + 1));
}

/** A DRA driver's name: a DNS subdomain (gpu.vendor.example). */
export function isDriverName(name: string): boolean {
  return dnsSubdomain.test(name);
}
