/** The API's identity: group, version, kinds. */
export const GROUP = 'devmig.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
