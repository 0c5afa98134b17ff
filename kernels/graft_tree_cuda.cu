// GPU launcher of the Graft tree build (no torch headers: this file compiles with nvcc alone,
// which is what CI's build check does).
#include <cuda_runtime.h>

#include "graft_tree.cuh"

namespace graft {

__global__ void build_tree_kernel(BuildArgs args) { build_request(args, blockIdx.x); }

}  // namespace graft

// One block per request; 256 threads cover the candidate and node loops.
extern "C" int graft_build_tree_cuda(const graft::BuildArgs* args, cudaStream_t stream) {
  if (args->bs == 0) return 0;
  graft::build_tree_kernel<<<args->bs, 256, 0, stream>>>(*args);
  return static_cast<int>(cudaGetLastError());
}
