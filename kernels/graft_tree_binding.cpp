// PyTorch binding of the Graft tree build. Built for the CPU (g++, every request in a loop) or,
// with -DGRAFT_WITH_CUDA and graft_tree_cuda.cu, for CUDA tensors as well.
#include <torch/extension.h>

#include "graft_tree.cuh"

#ifdef GRAFT_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
extern "C" int graft_build_tree_cuda(const graft::BuildArgs* args, cudaStream_t stream);
#endif

namespace {

void check(const torch::Tensor& t, const char* name, torch::ScalarType dtype, int64_t bs,
           int64_t width) {
  TORCH_CHECK(t.scalar_type() == dtype, name, " has dtype ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == (width < 0 ? 1 : 2) && t.size(0) == bs &&
                  (width < 0 || t.size(1) == width),
              name, " has shape ", t.sizes());
}

}  // namespace

// Returns (tokens, parents, scores, source, ancestors, depth, positions, retrieve_index,
// retrieve_next_token, retrieve_next_sibling, mask), all [bs, N] except ancestors [bs, N, N] and
// mask (uint8, SGLang's flat layout for mask_mode; empty for mask_mode -1). seq_lens_sum (the
// host's copy of sum(seq_lens), as SGLang keeps it) sizes the FULL_MASK without a device sync.
std::vector<torch::Tensor> build_tree(torch::Tensor tokens, torch::Tensor parents,
                                      torch::Tensor scores, torch::Tensor valid,
                                      torch::Tensor root_tokens, torch::Tensor seq_lens,
                                      int64_t num_draft, int64_t budget, double threshold,
                                      double relative, int64_t quota, bool top_up,
                                      int64_t mask_mode, int64_t seq_lens_sum) {
  const int64_t bs = tokens.size(0), c = tokens.size(1);
  check(tokens, "tokens", torch::kInt64, bs, c);
  check(parents, "parents", torch::kInt64, bs, c);
  check(scores, "scores", torch::kFloat32, bs, c);
  check(valid, "valid", torch::kUInt8, bs, c);
  check(root_tokens, "root_tokens", torch::kInt64, bs, -1);
  check(seq_lens, "seq_lens", torch::kInt64, bs, -1);
  TORCH_CHECK(budget >= 2 && num_draft >= 0 && num_draft <= c, "bad budget / num_draft");
  TORCH_CHECK(mask_mode >= graft::kNoMask && mask_mode <= graft::kQlenOnlyBitpacking,
              "mask_mode must be in [-1, 2], got ", mask_mode);
  TORCH_CHECK(mask_mode != graft::kQlenOnlyBitpacking || budget <= 32,
              "QLEN_ONLY_BITPACKING supports N <= 32, got N = ", budget);
  TORCH_CHECK(mask_mode != graft::kFullMask || seq_lens_sum >= 0, "seq_lens_sum must be >= 0");
  const auto dev = tokens.device();
  auto i32 = torch::TensorOptions().dtype(torch::kInt32).device(dev);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
  auto u8 = torch::TensorOptions().dtype(torch::kUInt8).device(dev);
  auto key = torch::empty({bs, c}, f32);
  auto work = torch::empty({6, bs, c}, i32);
  auto out_tokens = torch::empty({bs, budget}, i64);
  auto out_parents = torch::empty({bs, budget}, i64);
  auto out_scores = torch::empty({bs, budget}, f32);
  auto out_source = torch::empty({bs, budget}, i64);
  auto out_anc = torch::empty({bs, budget, budget}, u8);
  auto links = torch::empty({5, bs, budget}, i64);
  int64_t mask_size = 0;
  if (mask_mode == graft::kFullMask) mask_size = seq_lens_sum * budget + bs * budget * budget;
  if (mask_mode == graft::kQlenOnly) mask_size = bs * budget * budget;
  if (mask_mode == graft::kQlenOnlyBitpacking)
    mask_size = bs * budget * (budget > 16 ? 4 : (budget > 8 ? 2 : 1));
  auto mask = torch::empty({mask_size}, u8);

  graft::BuildArgs a{};
  a.tokens = tokens.data_ptr<int64_t>();
  a.parents = parents.data_ptr<int64_t>();
  a.scores = scores.data_ptr<float>();
  a.valid = valid.data_ptr<uint8_t>();
  a.root_tokens = root_tokens.data_ptr<int64_t>();
  a.seq_lens = seq_lens.data_ptr<int64_t>();
  a.bs = static_cast<int>(bs);
  a.C = static_cast<int>(c);
  a.m = static_cast<int>(num_draft);
  a.N = static_cast<int>(budget);
  a.threshold = static_cast<float>(threshold);
  a.relative = static_cast<float>(relative);
  a.quota = static_cast<int>(quota);
  a.top_up = top_up;
  a.key = key.data_ptr<float>();
  int32_t* w = work.data_ptr<int32_t>();
  a.canon = w;
  a.depth = w + bs * c;
  a.merged_key = w + 2 * bs * c;
  a.merged_score = w + 3 * bs * c;
  a.merged_source = w + 4 * bs * c;
  a.slot = w + 5 * bs * c;
  a.out_tokens = out_tokens.data_ptr<int64_t>();
  a.out_parents = out_parents.data_ptr<int64_t>();
  a.out_scores = out_scores.data_ptr<float>();
  a.out_source = out_source.data_ptr<int64_t>();
  a.out_ancestors = out_anc.data_ptr<uint8_t>();
  int64_t* l = links.data_ptr<int64_t>();
  a.out_depth = l;
  a.out_positions = l + bs * budget;
  a.out_retrieve_index = l + 2 * bs * budget;
  a.out_next_token = l + 3 * bs * budget;
  a.out_next_sibling = l + 4 * bs * budget;
  a.mask_mode = static_cast<int>(mask_mode);
  a.out_mask = mask.data_ptr<uint8_t>();

  if (dev.is_cuda()) {
#ifdef GRAFT_WITH_CUDA
    const int err = graft_build_tree_cuda(&a, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == 0, "graft_build_tree_cuda failed with CUDA error ", err);
#else
    TORCH_CHECK(false, "this build of the Graft kernels has no CUDA support");
#endif
  } else {
    for (int b = 0; b < a.bs; ++b) graft::build_request(a, b);
  }
  return {out_tokens, out_parents, out_scores, out_source, out_anc,
          links[0],   links[1],    links[2],   links[3],   links[4], mask};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_tree", &build_tree, "Graft tree build (prune, graft, select, layout)");
}
