// Graft tree build: prune + trie-merge graft + select exactly N + layout, one request per block.
//
// Semantics: exactly graft_sglang.tree.builder.build_graft_tree (the PyTorch reference), from
// the candidate pool on: the caller concatenates draft candidates and retrieved slots and puts
// every candidate on one score scale (graft_sglang/tree/kernel.py does that with a few tensor
// ops); this code does the rest.
//
// The same source compiles for the GPU (nvcc: one thread block per request, the GT_FOR loops
// spread over the block's threads, GT_SYNC = __syncthreads) and for the CPU (g++: one thread,
// GT_FOR = a plain loop, GT_SYNC = nothing), so the CPU build is tested against the reference
// on machines without a GPU and runs the very statements the GPU runs.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define GT_DEVICE __device__ __forceinline__
#define GT_FOR(i, n) for (int i = threadIdx.x; i < (n); i += blockDim.x)
#define GT_SINGLE if (threadIdx.x == 0)
#define GT_SYNC() __syncthreads()
#else
#define GT_DEVICE inline
#define GT_FOR(i, n) for (int i = 0; i < (n); ++i)
#define GT_SINGLE if (true)
#define GT_SYNC() \
  do {            \
  } while (0)
#endif

namespace graft {

constexpr float kPrunedOffset = 2.0f;  // demoted (pruned) keys live in [-2, -1)
constexpr float kInvalidKey = -10.0f;
constexpr int kDraft = 1, kRetrieved = 2, kFiller = 4;
// SGLang's TreeMaskMode; kNoMask skips the mask.
constexpr int kNoMask = -1, kFullMask = 0, kQlenOnly = 1, kQlenOnlyBitpacking = 2;

struct BuildArgs {
  // Candidate pool, [bs, C] row-major: the first m are draft candidates.
  const int64_t* tokens;
  const int64_t* parents;  // -1 = root, else < own index
  const float* scores;     // one scale: draft confidence / retrieved path prob x anchor
  const uint8_t* valid;
  const int64_t* root_tokens;  // [bs]
  const int64_t* seq_lens;     // [bs]
  int bs, C, m, N;
  float threshold;  // < 0: off
  float relative;   // < 0: off
  int quota;        // < 0: off
  bool top_up;
  // Workspace, [bs, C] each.
  float* key;
  int32_t* canon;
  int32_t* depth;
  int32_t* merged_key;  // order-preserving int encoding of the merged key
  int32_t* merged_score;
  int32_t* merged_source;
  int32_t* slot;  // 0 = not chosen, else 1..N-1
  // Outputs, [bs, N] (ancestors [bs, N, N]).
  int64_t* out_tokens;
  int64_t* out_parents;
  float* out_scores;
  int64_t* out_source;
  uint8_t* out_ancestors;
  int64_t* out_depth;
  int64_t* out_positions;
  int64_t* out_retrieve_index;
  int64_t* out_next_token;
  int64_t* out_next_sibling;
  // Attention mask in SGLang's layout for mask_mode (graft_sglang.tree.layout.tree_mask):
  // FULL [sum(seq_lens) * N + bs * N * N], QLEN_ONLY [bs * N * N], BITPACKING [bs * N * W].
  int mask_mode;
  uint8_t* out_mask;
};

// Float <-> int bijection that preserves order (for atomic max on floats; non-NaN only).
GT_DEVICE int32_t order_key(float f) {
  int32_t i;
  memcpy(&i, &f, sizeof(i));
  return i >= 0 ? i : i ^ 0x7FFFFFFF;
}
GT_DEVICE float order_key_inverse(int32_t i) {
  int32_t j = i >= 0 ? i : i ^ 0x7FFFFFFF;
  float f;
  memcpy(&f, &j, sizeof(f));
  return f;
}

#ifdef __CUDACC__
GT_DEVICE void atomic_max_i32(int32_t* p, int32_t v) { atomicMax(p, v); }
GT_DEVICE void atomic_or_i32(int32_t* p, int32_t v) { atomicOr(p, v); }
#else
GT_DEVICE void atomic_max_i32(int32_t* p, int32_t v) { *p = *p > v ? *p : v; }
GT_DEVICE void atomic_or_i32(int32_t* p, int32_t v) { *p |= v; }
#endif

// Build the tree of request b. Every GT_FOR loop is independent across its index, and every
// GT_SYNC separates phases that read what the previous phase wrote.
// Mask rows of request b from its ancestor matrix anc [N, N] (already written).
GT_DEVICE void write_mask(const BuildArgs& a, int b, const uint8_t* anc) {
  const int N = a.N;
  if (a.mask_mode == kQlenOnly) {
    uint8_t* out = a.out_mask + (int64_t)b * N * N;
    GT_FOR(i, N * N) { out[i] = anc[i]; }
  } else if (a.mask_mode == kQlenOnlyBitpacking) {
    const int width = N > 16 ? 4 : (N > 8 ? 2 : 1);  // bytes per row, little endian
    uint8_t* out = a.out_mask + (int64_t)b * N * width;
    GT_FOR(e, N * width) {
      const int i = e / width, first = (e % width) * 8;
      uint8_t byte = 0;
      for (int k = 0; k < 8 && first + k < N; ++k) byte |= anc[(int64_t)i * N + first + k] << k;
      out[e] = byte;
    }
  } else {  // kFullMask: row i = seq_len prefix columns (all visible), then anc row i
    int64_t offset = (int64_t)b * N * N;
    for (int r = 0; r < b; ++r) offset += a.seq_lens[r] * N;
    const int64_t len = a.seq_lens[b], row = len + N;
    uint8_t* out = a.out_mask + offset;
    GT_FOR(e, static_cast<int>(N * row)) {  // flat, so consecutive threads write consecutive bytes
      const int64_t i = e / row, j = e % row;
      out[e] = j < len ? 1 : anc[i * N + (j - len)];
    }
  }
}

GT_DEVICE void build_request(const BuildArgs& a, int b) {
  const int C = a.C, N = a.N, m = a.m, K = N - 1;
  const int64_t* tok = a.tokens + (int64_t)b * C;
  const int64_t* par = a.parents + (int64_t)b * C;
  const float* score = a.scores + (int64_t)b * C;
  const uint8_t* valid = a.valid + (int64_t)b * C;
  float* key = a.key + (int64_t)b * C;
  int32_t* canon = a.canon + (int64_t)b * C;
  int32_t* depth = a.depth + (int64_t)b * C;
  int32_t* mkey = a.merged_key + (int64_t)b * C;
  int32_t* mscore = a.merged_score + (int64_t)b * C;
  int32_t* msource = a.merged_source + (int64_t)b * C;
  int32_t* slot = a.slot + (int64_t)b * C;

  // 1. Prune: threshold, relative to the best draft confidence, rank quota. Demote by 2.
  float best = 0.0f;
  if (a.relative >= 0.0f) {
    for (int j = 0; j < m; ++j) best = score[j] > best ? score[j] : best;
  }
  GT_FOR(i, C) {
    bool pruned = false;
    if (i < m) {
      const float s = score[i];
      if (a.threshold >= 0.0f && s < a.threshold) pruned = true;
      if (a.relative >= 0.0f && s < a.relative * best) pruned = true;
      if (a.quota >= 0 && a.quota < m) {
        int rank = 0;
        for (int j = 0; j < m; ++j) rank += (score[j] > s) || (score[j] == s && j < i);
        if (rank >= a.quota) pruned = true;
      }
    }
    key[i] = valid[i] ? score[i] - kPrunedOffset * (pruned ? 1.0f : 0.0f) : kInvalidKey;
    int d = 0;  // depth below the root (root children: 1)
    for (int64_t p = i; p >= 0; p = par[p]) ++d;
    depth[i] = d;
    canon[i] = i;
    slot[i] = 0;
  }
  GT_SYNC();
  // Min of the key along the root path (parents precede children).
  GT_FOR(i, C) {
    float k = key[i];
    for (int64_t p = par[i]; p >= 0; p = par[p]) k = key[p] < k ? key[p] : k;
    mkey[i] = order_key(k);  // staged: key[] must stay intact until every thread has read it
  }
  GT_SYNC();
  GT_FOR(i, C) {
    key[i] = order_key_inverse(mkey[i]);
    mkey[i] = order_key(kInvalidKey);
    mscore[i] = order_key(0.0f);
    msource[i] = 0;
  }
  GT_SYNC();

  // 2. Graft: merge a candidate into the first one with the same merged parent and token,
  // level by level (a node's merged parent is one level up, already final).
  int max_depth = 0;
  for (int i = 0; i < C; ++i) max_depth = depth[i] > max_depth ? depth[i] : max_depth;
  for (int level = 1; level <= max_depth; ++level) {
    GT_FOR(i, C) {
      const bool live = valid[i] && (a.top_up || key[i] > -1.0f);
      if (depth[i] == level && live) {
        const int64_t cp = par[i] >= 0 ? canon[par[i]] : -1;
        for (int j = 0; j < i; ++j) {
          const bool live_j = valid[j] && (a.top_up || key[j] > -1.0f);
          if (depth[j] == level && live_j && tok[j] == tok[i] &&
              (par[j] >= 0 ? canon[par[j]] : -1) == cp) {
            canon[i] = j;  // first such j: its own canon is itself
            break;
          }
        }
      }
    }
    GT_SYNC();
  }
  GT_FOR(i, C) {
    const bool live = valid[i] && (a.top_up || key[i] > -1.0f);
    if (live) {
      atomic_max_i32(&mkey[canon[i]], order_key(key[i]));
      atomic_max_i32(&mscore[canon[i]], order_key(score[i]));
      atomic_or_i32(&msource[canon[i]], i < m ? kDraft : kRetrieved);
    }
  }
  GT_SYNC();

  // 3. Select the best K canonical nodes (key desc, index asc), in ascending pool order.
  GT_FOR(i, C) {
    const bool live = valid[i] && (a.top_up || key[i] > -1.0f);
    if (live && canon[i] == i) {
      const float ki = order_key_inverse(mkey[i]);
      int rank = 0;
      for (int j = 0; j < C; ++j) {
        const bool live_j = valid[j] && (a.top_up || key[j] > -1.0f);
        if (live_j && canon[j] == j) {
          const float kj = order_key_inverse(mkey[j]);
          rank += (kj > ki) || (kj == ki && j < i);
        }
      }
      slot[i] = rank < K ? -1 : 0;  // -1: chosen, slot number assigned below
    }
  }
  GT_SYNC();
  GT_FOR(i, C) {
    if (slot[i] == -1) {
      int s = 1;
      for (int j = 0; j < i; ++j) s += slot[j] != 0;  // chosen j < i (marked -1 or numbered)
      slot[i] = -1 - s;  // keep "chosen" visible to the other threads until all are numbered
    }
  }
  GT_SYNC();
  GT_FOR(i, C) {
    if (slot[i] < 0) slot[i] = -1 - slot[i];
  }
  GT_SYNC();

  // 4. Emit chosen nodes, then the filler chain, then the layout.
  int64_t* otok = a.out_tokens + (int64_t)b * N;
  int64_t* opar = a.out_parents + (int64_t)b * N;
  float* oscore = a.out_scores + (int64_t)b * N;
  int64_t* osrc = a.out_source + (int64_t)b * N;
  GT_FOR(i, C) {
    const int s = slot[i];
    if (s > 0) {
      otok[s] = tok[i];
      opar[s] = par[i] >= 0 ? slot[canon[par[i]]] : 0;
      oscore[s] = order_key_inverse(mscore[i]);
      osrc[s] = msource[i];
    }
  }
  GT_SYNC();
  GT_SINGLE {
    otok[0] = a.root_tokens[b];
    opar[0] = -1;
    oscore[0] = 1.0f;
    osrc[0] = 0;
    int chosen = 0;
    for (int i = 0; i < C; ++i) chosen += slot[i] > 0;
    // Smallest token id in [0, N) that no root child uses.
    int64_t filler = 0;
    for (; filler < N; ++filler) {
      bool used = false;
      for (int s = 1; s <= chosen && !used; ++s) used = opar[s] == 0 && otok[s] == filler;
      if (!used) break;
    }
    for (int s = chosen + 1; s < N; ++s) {
      otok[s] = filler;
      opar[s] = s == chosen + 1 ? 0 : s - 1;
      oscore[s] = 0.0f;
      osrc[s] = kFiller;
    }
  }
  GT_SYNC();
  uint8_t* anc = a.out_ancestors + (int64_t)b * N * N;
  GT_FOR(i, N) {
    for (int j = 0; j < N; ++j) anc[(int64_t)i * N + j] = 0;
    int d = -1;
    for (int64_t p = i; p >= 0; p = opar[p]) {
      anc[(int64_t)i * N + p] = 1;
      ++d;
    }
    a.out_depth[(int64_t)b * N + i] = d;
    a.out_positions[(int64_t)b * N + i] = a.seq_lens[b] + d;
    a.out_retrieve_index[(int64_t)b * N + i] = (int64_t)b * N + i;
    int64_t first_child = -1, next_sib = -1;
    for (int k = N - 1; k > 0; --k) {
      if (opar[k] == i) first_child = k;
      if (k > i && i > 0 && opar[k] == opar[i]) next_sib = k;
    }
    a.out_next_token[(int64_t)b * N + i] = first_child;
    a.out_next_sibling[(int64_t)b * N + i] = next_sib;
  }
  if (a.mask_mode == kNoMask) return;
  GT_SYNC();
  write_mask(a, b, anc);
}

}  // namespace graft
