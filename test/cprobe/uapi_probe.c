/*
 * Prints, as one JSON object, what <linux/vfio.h> on this machine says about everything
 * src/vfio/uapi.ts declares: constant values, ioctl numbers, struct sizes, field offsets and sizes.
 * What this header is too old to have is reported only under #ifdef, so the test can tell "absent"
 * from "different". The _IO() encoding itself is always reported for the newer ioctl numbers
 * ("_IO+18", "_IO+21"): the numbers come from the kernel source, the encoding from this machine.
 */
#include <linux/vfio.h>
#include <stddef.h>
#include <stdio.h>

static int first = 1;
static void pair(const char *name, long long v) { printf("%s\"%s\":%lld", first ? "" : ",", name, v); first = 0; }

#define V(name) pair(#name, (long long)(name))
#define S(type) pair("sizeof " #type, (long long)sizeof(struct type))
#define F(type, f) \
  pair(#type "." #f, (long long)offsetof(struct type, f)); \
  pair("sizeof " #type "." #f, (long long)sizeof(((struct type *)0)->f))

int main(void) {
  printf("{");
  V(VFIO_DEVICE_STATE_ERROR); V(VFIO_DEVICE_STATE_STOP); V(VFIO_DEVICE_STATE_RUNNING);
  V(VFIO_DEVICE_STATE_STOP_COPY); V(VFIO_DEVICE_STATE_RESUMING); V(VFIO_DEVICE_STATE_RUNNING_P2P);
  V(VFIO_MIGRATION_STOP_COPY); V(VFIO_MIGRATION_P2P);
  V(VFIO_DEVICE_FEATURE_MASK); V(VFIO_DEVICE_FEATURE_GET); V(VFIO_DEVICE_FEATURE_SET); V(VFIO_DEVICE_FEATURE_PROBE);
  V(VFIO_DEVICE_FEATURE_MIGRATION); V(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
  V(VFIO_TYPE); V(VFIO_BASE);
  V(VFIO_GET_API_VERSION); V(VFIO_CHECK_EXTENSION); V(VFIO_SET_IOMMU); V(VFIO_GROUP_GET_STATUS);
  V(VFIO_GROUP_SET_CONTAINER); V(VFIO_GROUP_GET_DEVICE_FD); V(VFIO_DEVICE_GET_INFO); V(VFIO_DEVICE_GET_REGION_INFO);
  V(VFIO_DEVICE_RESET);
  V(VFIO_DEVICE_FEATURE);
  V(VFIO_API_VERSION); V(VFIO_TYPE1v2_IOMMU); V(VFIO_GROUP_FLAGS_VIABLE);
  S(vfio_device_feature); F(vfio_device_feature, argsz); F(vfio_device_feature, flags);
  S(vfio_device_feature_migration); F(vfio_device_feature_migration, flags);
  S(vfio_device_feature_mig_state); F(vfio_device_feature_mig_state, device_state); F(vfio_device_feature_mig_state, data_fd);
  S(vfio_group_status); F(vfio_group_status, argsz); F(vfio_group_status, flags);
  S(vfio_region_info); F(vfio_region_info, argsz); F(vfio_region_info, flags); F(vfio_region_info, index);
  F(vfio_region_info, cap_offset); F(vfio_region_info, size); F(vfio_region_info, offset);
  pair("_IO+18", _IO(VFIO_TYPE, VFIO_BASE + 18));
  pair("_IO+21", _IO(VFIO_TYPE, VFIO_BASE + 21));
#ifdef VFIO_MIGRATION_PRE_COPY /* the enum's PRE_COPY states came with it (Linux 6.2) */
  V(VFIO_MIGRATION_PRE_COPY); V(VFIO_DEVICE_STATE_PRE_COPY); V(VFIO_DEVICE_STATE_PRE_COPY_P2P);
#endif
#ifdef VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
  V(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE);
  S(vfio_device_feature_mig_data_size); F(vfio_device_feature_mig_data_size, stop_copy_length);
#endif
#ifdef VFIO_MIG_GET_PRECOPY_INFO
  V(VFIO_MIG_GET_PRECOPY_INFO);
  S(vfio_precopy_info); F(vfio_precopy_info, argsz); F(vfio_precopy_info, flags);
  F(vfio_precopy_info, initial_bytes); F(vfio_precopy_info, dirty_bytes);
#endif
#ifdef VFIO_DEVICE_BIND_IOMMUFD
  V(VFIO_DEVICE_BIND_IOMMUFD);
  S(vfio_device_bind_iommufd); F(vfio_device_bind_iommufd, argsz); F(vfio_device_bind_iommufd, flags);
  F(vfio_device_bind_iommufd, iommufd); F(vfio_device_bind_iommufd, out_devid);
#endif
  printf("}\n");
  return 0;
}
