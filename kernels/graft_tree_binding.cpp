// PyTorch binding of the Graft tree build. Built for the CPU (g++, every request in a loop) or,
// with -DGRAFT_WITH_CUDA and graft_tree_cuda.cu, for CUDA tensors as well.
#include <torch/extension.h>

#include <optional>

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

// Inputs: the draft candidates [bs, M] and retrieved slots [bs, R] as DraftCandidates /
// RetrievedCandidates hold them (valid as uint8), all on one device. Returns (tokens, parents,
// scores, source, ancestors, depth, positions, retrieve_index, retrieve_next_token,
// retrieve_next_sibling, mask), all [bs, N] except ancestors [bs, N, N] bool and mask: SGLang's
// flat layout for mask_mode written at the head of mask_out's bytes (any contiguous tensor on the
// inputs' device; returned as given, bytes past the mask untouched) or, without mask_out, a fresh
// uint8 tensor (empty for mask_mode -1). seq_lens_sum (the host's copy of sum(seq_lens), as
// SGLang keeps it) sizes a fresh FULL_MASK; with mask_out it is not needed: each request finds
// its offset from seq_lens on the device and no byte past mask_out is written. quotas: [bs]
// int64 per-request draft quotas or None (quota for every request). sequential: on CPU tensors
// the host's sequential prune / graft / select (else the GPU's statements on one thread);
// ignored on CUDA tensors.
std::vector<torch::Tensor> build_tree(torch::Tensor draft_tokens, torch::Tensor draft_parents,
                                      torch::Tensor draft_scores, torch::Tensor ret_tokens,
                                      torch::Tensor ret_parents, torch::Tensor ret_anchors,
                                      torch::Tensor ret_probs, torch::Tensor ret_valid,
                                      double retrieval_weight, torch::Tensor root_tokens,
                                      torch::Tensor seq_lens, int64_t budget, double threshold,
                                      double relative, int64_t quota,
                                      std::optional<torch::Tensor> quotas, bool top_up,
                                      int64_t mask_mode, int64_t seq_lens_sum,
                                      std::optional<torch::Tensor> mask_out, bool sequential) {
  const int64_t bs = draft_tokens.size(0), m = draft_tokens.size(1), r = ret_tokens.size(1);
  const int64_t c = m + r;
  check(draft_tokens, "draft.tokens", torch::kInt64, bs, m);
  check(draft_parents, "draft.parents", torch::kInt64, bs, m);
  check(draft_scores, "draft.scores", torch::kFloat32, bs, m);
  check(ret_tokens, "retrieved.tokens", torch::kInt64, bs, r);
  check(ret_parents, "retrieved.parents", torch::kInt64, bs, r);
  check(ret_anchors, "retrieved.anchors", torch::kInt64, bs, r);
  check(ret_probs, "retrieved.path_probs", torch::kFloat32, bs, r);
  check(ret_valid, "retrieved.valid", torch::kUInt8, bs, r);
  check(root_tokens, "root_tokens", torch::kInt64, bs, -1);
  check(seq_lens, "seq_lens", torch::kInt64, bs, -1);
  if (quotas) check(*quotas, "quotas", torch::kInt64, bs, -1);
  TORCH_CHECK(budget >= 2, "budget must be >= 2, got ", budget);
  TORCH_CHECK(mask_mode >= graft::kNoMask && mask_mode <= graft::kQlenOnlyBitpacking,
              "mask_mode must be in [-1, 2], got ", mask_mode);
  TORCH_CHECK(mask_mode != graft::kQlenOnlyBitpacking || budget <= 32,
              "QLEN_ONLY_BITPACKING supports N <= 32, got N = ", budget);
  TORCH_CHECK(mask_mode != graft::kFullMask || mask_out || seq_lens_sum >= 0,
              "seq_lens_sum must be >= 0");
  const auto dev = draft_tokens.device();
  for (const torch::Tensor* t : {&draft_parents, &draft_scores, &ret_tokens, &ret_parents,
                                 &ret_anchors, &ret_probs, &ret_valid, &root_tokens, &seq_lens})
    TORCH_CHECK(t->device() == dev, "every input must be on ", dev, ", one is on ", t->device());
  if (quotas) TORCH_CHECK(quotas->device() == dev, "quotas must be on ", dev);
  auto i32 = torch::TensorOptions().dtype(torch::kInt32).device(dev);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64).device(dev);
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(dev);
  auto u8 = torch::TensorOptions().dtype(torch::kUInt8).device(dev);
  auto pool_links = torch::empty({2, bs, c}, i64);  // tokens, parents
  auto pool_scores = torch::empty({bs, c}, f32);
  auto pool_valid = torch::empty({bs, c}, u8);
  auto key = torch::empty({bs, c}, f32);
  auto work = torch::empty({6, bs, c}, i32);
  auto out_tokens = torch::empty({bs, budget}, i64);
  auto out_parents = torch::empty({bs, budget}, i64);
  auto out_scores = torch::empty({bs, budget}, f32);
  auto out_source = torch::empty({bs, budget}, i64);
  auto out_anc = torch::empty({bs, budget, budget}, u8.dtype(torch::kBool));  // written as bytes
  auto links = torch::empty({5, bs, budget}, i64);
  torch::Tensor mask;
  if (mask_out) {
    TORCH_CHECK(mask_mode != graft::kNoMask, "mask_out needs a mask_mode");
    TORCH_CHECK(mask_out->device() == dev, "mask_out must be on ", dev, ", it is on ",
                mask_out->device());
    TORCH_CHECK(mask_out->is_contiguous(), "mask_out must be contiguous");
    mask = *mask_out;
  } else {
    int64_t mask_size = 0;
    if (mask_mode == graft::kFullMask) mask_size = seq_lens_sum * budget + bs * budget * budget;
    if (mask_mode == graft::kQlenOnly) mask_size = bs * budget * budget;
    if (mask_mode == graft::kQlenOnlyBitpacking)
      mask_size = bs * budget * graft::packed_row_bytes(static_cast<int>(budget));
    mask = torch::empty({mask_size}, u8);
  }

  graft::BuildArgs a{};
  a.draft_tokens = draft_tokens.data_ptr<int64_t>();
  a.draft_parents = draft_parents.data_ptr<int64_t>();
  a.draft_scores = draft_scores.data_ptr<float>();
  a.ret_tokens = ret_tokens.data_ptr<int64_t>();
  a.ret_parents = ret_parents.data_ptr<int64_t>();
  a.ret_anchors = ret_anchors.data_ptr<int64_t>();
  a.ret_probs = ret_probs.data_ptr<float>();
  a.ret_valid = ret_valid.data_ptr<uint8_t>();
  a.retrieval_weight = static_cast<float>(retrieval_weight);
  a.root_tokens = root_tokens.data_ptr<int64_t>();
  a.seq_lens = seq_lens.data_ptr<int64_t>();
  a.bs = static_cast<int>(bs);
  a.C = static_cast<int>(c);
  a.m = static_cast<int>(m);
  a.N = static_cast<int>(budget);
  a.tokens = pool_links.data_ptr<int64_t>();
  a.parents = a.tokens + bs * c;
  a.scores = pool_scores.data_ptr<float>();
  a.valid = pool_valid.data_ptr<uint8_t>();
  a.threshold = static_cast<float>(threshold);
  a.relative = static_cast<float>(relative);
  a.quota = static_cast<int>(quota);
  a.quotas = quotas ? quotas->data_ptr<int64_t>() : nullptr;
  a.top_up = top_up;
  a.sequential = sequential;
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
  a.out_ancestors = reinterpret_cast<uint8_t*>(out_anc.data_ptr<bool>());
  int64_t* l = links.data_ptr<int64_t>();
  a.out_depth = l;
  a.out_positions = l + bs * budget;
  a.out_retrieve_index = l + 2 * bs * budget;
  a.out_next_token = l + 3 * bs * budget;
  a.out_next_sibling = l + 4 * bs * budget;
  a.mask_mode = static_cast<int>(mask_mode);
  a.out_mask = static_cast<uint8_t*>(mask.data_ptr());
  a.mask_capacity = mask.numel() * static_cast<int64_t>(mask.element_size());

  if (dev.is_cuda()) {
#ifdef GRAFT_WITH_CUDA
    const int err = graft_build_tree_cuda(&a, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == 0, "graft_build_tree_cuda failed with CUDA error ", err);
#else
    TORCH_CHECK(false, "this build of the Graft kernels has no CUDA support");
#endif
  } else if (sequential) {
    graft::HostScratch scratch;
    for (int b = 0; b < a.bs; ++b) {
      graft::assemble_pool(a, b);
      graft::select_sequential(a, b, scratch);
      graft::emit(a, b);
    }
  } else {
    for (int b = 0; b < a.bs; ++b) graft::build_request(a, b);
  }
  return {out_tokens, out_parents, out_scores, out_source, out_anc,
          links[0],   links[1],    links[2],   links[3],   links[4], mask};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build_tree", &build_tree, "Graft tree build (prune, graft, select, layout)");
}
