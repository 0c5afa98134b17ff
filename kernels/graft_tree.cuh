// Graft tree build: prune + trie-merge graft + select exactly N + layout, one request per block.
//
// Semantics: exactly graft_sglang.tree.builder.build_graft_tree (the PyTorch reference), from
// the draft candidates and retrieved slots on: one launch assembles the candidate pool (every
// candidate on one score scale), prunes, grafts, selects and writes the layout and the mask.
//
// The same source compiles for the GPU (nvcc: one thread block per request, the GT_FOR loops
// spread over the block's threads, GT_SYNC = __syncthreads) and for the CPU (g++: one thread,
// GT_FOR = a plain loop, GT_SYNC = nothing), so the CPU build is tested against the reference
// on machines without a GPU and runs the very statements the GPU runs. Those statements compare
// every candidate with every other (O(C^2) per request: cheap spread over a block, slow on one
// thread), so the host build also has a sequential version of the prune / graft / select phases
// (``select_sequential``: O(C log C), same results; BuildArgs::sequential picks it), and both
// versions share the emit, layout and mask phases.
#pragma once

#include <cstdint>
#include <cstring>
#ifndef __CUDACC__
#include <algorithm>
#include <vector>
#endif

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
  // Inputs, row-major: draft candidates [bs, m], retrieved slots [bs, C - m]
  // (graft_sglang.tree.draft.DraftCandidates, graft_sglang.tree.retrieved.RetrievedCandidates).
  const int64_t* draft_tokens;
  const int64_t* draft_parents;  // -1 = root, else < own index
  const float* draft_scores;     // cumulative draft confidence
  const int64_t* ret_tokens;
  const int64_t* ret_parents;  // in the pool's index space: -1, a draft index or m + slot
  const int64_t* ret_anchors;  // the draft candidate (or -1 = root) a slot's trie hangs below
  const float* ret_probs;      // trie path probability from the anchor
  const uint8_t* ret_valid;
  float retrieval_weight;
  const int64_t* root_tokens;  // [bs]
  const int64_t* seq_lens;     // [bs]
  int bs, C, m, N;
  // The candidate pool, [bs, C] workspace (assemble_pool): the first m are draft candidates.
  int64_t* tokens;
  int64_t* parents;
  float* scores;  // one scale: draft confidence / retrieved path prob x weight x anchor's
  uint8_t* valid;
  float threshold;        // < 0: off
  float relative;         // < 0: off
  int quota;              // < 0: off; used where quotas is null
  const int64_t* quotas;  // [bs] per-request quotas (any value: rank >= quota is pruned), or null
  bool top_up;
  bool sequential;  // host build: the sequential prune / graft / select (select_sequential)
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
  // FULL [sum(seq_lens) * N + bs * N * N], QLEN_ONLY [bs * N * N], BITPACKING [bs * N * W]
  // bytes, at the head of out_mask. Bytes at or past mask_capacity are never written (a FULL
  // mask's size depends on seq_lens, which the host may not have read).
  int mask_mode;
  uint8_t* out_mask;
  int64_t mask_capacity;
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

// Every GT_FOR loop below is independent across its index, and every GT_SYNC separates phases
// that read what the previous phase wrote.

GT_DEVICE int packed_row_bytes(int N) { return N > 16 ? 4 : (N > 8 ? 2 : 1); }  // little endian

// Byte offset of request b's mask (FULL_MASK: each earlier request r holds N rows of
// seq_lens[r] + N columns), read from seq_lens on the device, O(b).
GT_DEVICE int64_t mask_offset(const BuildArgs& a, int b) {
  const int64_t N = a.N;
  if (a.mask_mode == kQlenOnly) return b * N * N;
  if (a.mask_mode == kQlenOnlyBitpacking) return b * N * packed_row_bytes(a.N);
  int64_t offset = b * N * N;
  for (int r = 0; r < b; ++r) offset += a.seq_lens[r] * N;
  return offset;
}

// Mask rows of request b from its ancestor matrix anc [N, N] (already written); bytes at or past
// mask_capacity are dropped.
GT_DEVICE void write_mask(const BuildArgs& a, int b, const uint8_t* anc) {
  const int N = a.N;
  const int64_t offset = mask_offset(a, b);
  const int64_t room = a.mask_capacity - offset;
  uint8_t* out = a.out_mask + offset;
  if (a.mask_mode == kQlenOnly) {
    GT_FOR(i, N * N) {
      if (i < room) out[i] = anc[i];
    }
  } else if (a.mask_mode == kQlenOnlyBitpacking) {
    const int width = packed_row_bytes(N);
    GT_FOR(e, N * width) {
      const int i = e / width, first = (e % width) * 8;
      uint8_t byte = 0;
      for (int k = 0; k < 8 && first + k < N; ++k) byte |= anc[(int64_t)i * N + first + k] << k;
      if (e < room) out[e] = byte;
    }
  } else {  // kFullMask: row i = seq_len prefix columns (all visible), then anc row i
    const int64_t len = a.seq_lens[b], row = len + N;
    GT_FOR(e, static_cast<int>(N * row)) {  // flat, so consecutive threads write consecutive bytes
      const int64_t i = e / row, j = e % row;
      if (e < room) out[e] = j < len ? 1 : anc[i * N + (j - len)];
    }
  }
}

#ifndef __CUDACC__
// n bytes at byte pos of the mask: copies of src, or ones if src is null; those at or past
// mask_capacity are dropped.
inline void put_mask_bytes(const BuildArgs& a, int64_t pos, int64_t n, const uint8_t* src) {
  n = std::min(n, a.mask_capacity - pos);
  if (n <= 0) return;
  if (src != nullptr) {
    memcpy(a.out_mask + pos, src, n);
  } else {
    memset(a.out_mask + pos, 1, n);
  }
}

// write_mask's bytes a row at a time (a memset and a memcpy per FULL_MASK row, not a division
// per byte).
inline void write_mask_rows(const BuildArgs& a, int b, const uint8_t* anc) {
  if (a.mask_mode != kFullMask) {
    write_mask(a, b, anc);
    return;
  }
  const int N = a.N;
  const int64_t offset = mask_offset(a, b), len = a.seq_lens[b];
  for (int i = 0; i < N; ++i) {
    const int64_t start = offset + i * (len + N);
    put_mask_bytes(a, start, len, nullptr);
    put_mask_bytes(a, start + len, N, anc + (int64_t)i * N);
  }
}
#endif

// Request b's rows of the pool and the workspace, [C] each.
struct Rows {
  int64_t *tok, *par;
  float* score;
  uint8_t* valid;
  float* key;
  int32_t *canon, *depth, *mkey, *mscore, *msource, *slot;
};
GT_DEVICE Rows rows_of(const BuildArgs& a, int b) {
  const int64_t o = (int64_t)b * a.C;
  return {a.tokens + o, a.parents + o, a.scores + o,       a.valid + o,
          a.key + o,    a.canon + o,   a.depth + o,        a.merged_key + o,
          a.merged_score + o,          a.merged_source + o, a.slot + o};
}

// Phase 0 of request b: the candidate pool (builder._candidate_pool's scores, same float ops).
GT_DEVICE void assemble_pool(const BuildArgs& a, int b) {
  const int C = a.C, m = a.m, R = C - m;
  const int64_t d = (int64_t)b * m, r = (int64_t)b * R, o = (int64_t)b * C;
  GT_FOR(i, C) {
    if (i < m) {
      a.tokens[o + i] = a.draft_tokens[d + i];
      a.parents[o + i] = a.draft_parents[d + i];
      a.scores[o + i] = a.draft_scores[d + i];
      a.valid[o + i] = 1;
    } else {
      const int64_t j = r + i - m, anchor = a.ret_anchors[j];
      const float anchor_score = anchor >= 0 && anchor < m ? a.draft_scores[d + anchor] : 1.0f;
      a.tokens[o + i] = a.ret_tokens[j];
      a.parents[o + i] = a.ret_parents[j];
      a.scores[o + i] = a.ret_probs[j] * a.retrieval_weight * anchor_score;
      a.valid[o + i] = a.ret_valid[j];
    }
  }
  GT_SYNC();
}

// Phases 1-3 of request b, the GPU's statements: prune, graft (trie merge), select. Leave canon,
// merged_score, merged_source and slot (1..N-1 for the chosen, ascending in pool order) for emit.
GT_DEVICE void select_parallel(const BuildArgs& a, int b) {
  const int C = a.C, N = a.N, m = a.m, K = N - 1;
  auto [tok, par, score, valid, key, canon, depth, mkey, mscore, msource, slot] = rows_of(a, b);

  // 1. Prune: threshold, relative to the best draft confidence, rank quota. Demote by 2.
  float best = 0.0f;
  if (a.relative >= 0.0f) {
    for (int j = 0; j < m; ++j) best = score[j] > best ? score[j] : best;
  }
  const int64_t quota = a.quotas != nullptr ? a.quotas[b] : a.quota;
  const bool by_quota = (a.quotas != nullptr || quota >= 0) && quota < m;
  GT_FOR(i, C) {
    bool pruned = false;
    if (i < m) {
      const float s = score[i];
      if (a.threshold >= 0.0f && s < a.threshold) pruned = true;
      if (a.relative >= 0.0f && s < a.relative * best) pruned = true;
      if (by_quota) {
        int rank = 0;
        for (int j = 0; j < m; ++j) rank += (score[j] > s) || (score[j] == s && j < i);
        if (rank >= quota) pruned = true;
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
}

#ifndef __CUDACC__
// Reused between requests of one host build.
struct HostScratch {
  std::vector<int32_t> order;  // candidate indices
  std::vector<int32_t> table;  // open addressing: (merged parent, token) -> first candidate
};

// select_parallel's results, sequentially: parents precede children, so one pass in pool order
// sees every parent's path minimum and merged parent final. O(C log C) per request.
inline void select_sequential(const BuildArgs& a, int b, HostScratch& scratch) {
  const int C = a.C, m = a.m, K = a.N - 1;
  // depth is only the parallel merge's: here it holds the quota's verdicts
  auto [tok, par, score, valid, key, canon, quota_pruned, mkey, mscore, msource, slot] =
      rows_of(a, b);
  std::vector<int32_t>& order = scratch.order;

  // 1. Prune; the quota rank is the position in a stable descending sort (ties: lower index).
  float best = 0.0f;
  if (a.relative >= 0.0f) {
    for (int j = 0; j < m; ++j) best = score[j] > best ? score[j] : best;
  }
  const int64_t quota = a.quotas != nullptr ? a.quotas[b] : a.quota;
  for (int i = 0; i < m; ++i) quota_pruned[i] = 0;
  if ((a.quotas != nullptr || quota >= 0) && quota < m) {
    order.resize(m);
    for (int i = 0; i < m; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [score](int32_t x, int32_t y) { return score[x] > score[y]; });
    for (int r = 0; r < m; ++r) quota_pruned[order[r]] = r >= quota;
  }
  for (int i = 0; i < C; ++i) {
    bool pruned = false;
    if (i < m) {
      const float s = score[i];
      pruned = (a.threshold >= 0.0f && s < a.threshold) ||
               (a.relative >= 0.0f && s < a.relative * best) || quota_pruned[i];
    }
    float k = valid[i] ? score[i] - kPrunedOffset * (pruned ? 1.0f : 0.0f) : kInvalidKey;
    if (par[i] >= 0 && key[par[i]] < k) k = key[par[i]];  // the parent's path minimum
    key[i] = k;
    canon[i] = i;
    slot[i] = 0;
    mkey[i] = order_key(kInvalidKey);
    mscore[i] = order_key(0.0f);
    msource[i] = 0;
  }

  // 2. Graft: the first live candidate with the same merged parent and token.
  int size = 2;
  while (size < 2 * C) size *= 2;
  std::vector<int32_t>& table = scratch.table;
  table.assign(size, -1);
  auto merged_parent = [&](int i) -> int64_t { return par[i] >= 0 ? canon[par[i]] : -1; };
  for (int i = 0; i < C; ++i) {
    if (!(valid[i] && (a.top_up || key[i] > -1.0f))) continue;
    const int64_t cp = merged_parent(i);
    uint64_t h = static_cast<uint64_t>(tok[i]) * 0x9E3779B97F4A7C15ull ^
                 static_cast<uint64_t>(cp + 1) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 31;
    for (h &= size - 1;; h = (h + 1) & (size - 1)) {
      const int32_t j = table[h];
      if (j < 0) {
        table[h] = i;  // first of its kind: its own canon
        break;
      }
      if (tok[j] == tok[i] && merged_parent(j) == cp) {
        canon[i] = j;
        break;
      }
    }
    atomic_max_i32(&mkey[canon[i]], order_key(key[i]));
    atomic_max_i32(&mscore[canon[i]], order_key(score[i]));
    atomic_or_i32(&msource[canon[i]], i < m ? kDraft : kRetrieved);
  }

  // 3. Select the best K canonical nodes (key desc, index asc), numbered in pool order.
  order.clear();
  for (int i = 0; i < C; ++i) {
    if (valid[i] && (a.top_up || key[i] > -1.0f) && canon[i] == i) order.push_back(i);
  }
  if (static_cast<int>(order.size()) > K) {
    std::nth_element(order.begin(), order.begin() + K, order.end(), [mkey](int32_t x, int32_t y) {
      const float kx = order_key_inverse(mkey[x]), ky = order_key_inverse(mkey[y]);
      return kx > ky || (kx == ky && x < y);
    });
    order.resize(K);
  }
  for (const int32_t i : order) slot[i] = -1;
  for (int i = 0, s = 1; i < C; ++i) {
    if (slot[i] == -1) slot[i] = s++;
  }
}
#endif

// Phase 4 of request b: emit the chosen nodes, then the filler chain, the layout and the mask.
GT_DEVICE void emit(const BuildArgs& a, int b) {
  const int C = a.C, N = a.N;
  const auto [tok, par, score, valid, key, canon, depth, mkey, mscore, msource, slot] =
      rows_of(a, b);
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
#ifndef __CUDACC__
  if (a.sequential) {
    write_mask_rows(a, b, anc);
    return;
  }
#endif
  write_mask(a, b, anc);
}

// The whole build of request b with the GPU's statements (one block per request there).
GT_DEVICE void build_request(const BuildArgs& a, int b) {
  assemble_pool(a, b);
  select_parallel(a, b);
  emit(a, b);
}

}  // namespace graft
