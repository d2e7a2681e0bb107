/* Prints, as JSON, what <linux/vfio.h> on this machine says: values, sizes and offsets. */
#include <linux/vfio.h>
#include <stddef.h>
#include <stdio.h>

#define V(name) printf("\"%s\":%lld,", #name, (long long)(name))
#define S(type) printf("\"sizeof %s\":%zu,", #type, sizeof(struct type))
#define O(type, f) printf("\"%s.%s\":%zu,", #type, #f, offsetof(struct type, f))

int main(void) {
  printf("{");
  V(VFIO_DEVICE_STATE_ERROR); V(VFIO_DEVICE_STATE_STOP); V(VFIO_DEVICE_STATE_RUNNING); V(VFIO_DEVICE_STATE_STOP_COPY);
  V(VFIO_DEVICE_STATE_RESUMING); V(VFIO_DEVICE_STATE_RUNNING_P2P);
  V(VFIO_MIGRATION_STOP_COPY); V(VFIO_MIGRATION_P2P);
  V(VFIO_DEVICE_FEATURE_MASK); V(VFIO_DEVICE_FEATURE_GET); V(VFIO_DEVICE_FEATURE_SET); V(VFIO_DEVICE_FEATURE_PROBE);
  V(VFIO_DEVICE_FEATURE_MIGRATION); V(VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
  V(VFIO_GET_API_VERSION); V(VFIO_CHECK_EXTENSION); V(VFIO_SET_IOMMU); V(VFIO_GROUP_GET_STATUS); V(VFIO_GROUP_SET_CONTAINER);
  V(VFIO_GROUP_GET_DEVICE_FD); V(VFIO_DEVICE_GET_INFO); V(VFIO_DEVICE_RESET); V(VFIO_DEVICE_FEATURE);
  V(VFIO_API_VERSION); V(VFIO_TYPE1v2_IOMMU); V(VFIO_GROUP_FLAGS_VIABLE);
  S(vfio_device_feature); O(vfio_device_feature, argsz); O(vfio_device_feature, flags);
  S(vfio_device_feature_migration); O(vfio_device_feature_migration, flags);
  S(vfio_device_feature_mig_state); O(vfio_device_feature_mig_state, device_state); O(vfio_device_feature_mig_state, data_fd);
  S(vfio_group_status); O(vfio_group_status, argsz); O(vfio_group_status, flags);
#ifdef VFIO_MIGRATION_PRE_COPY
  V(VFIO_MIGRATION_PRE_COPY); V(VFIO_DEVICE_STATE_PRE_COPY); V(VFIO_DEVICE_STATE_PRE_COPY_P2P);
  V(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE); V(VFIO_MIG_GET_PRECOPY_INFO);
  S(vfio_precopy_info); O(vfio_precopy_info, initial_bytes); O(vfio_precopy_info, dirty_bytes);
  S(vfio_device_feature_mig_data_size);
#endif
#ifdef VFIO_DEVICE_BIND_IOMMUFD
  V(VFIO_DEVICE_BIND_IOMMUFD); O(vfio_device_bind_iommufd, iommufd); O(vfio_device_bind_iommufd, out_devid);
#endif
  printf("\"ok\":1}\n");
  return 0;
}
