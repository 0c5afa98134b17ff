// Native suffix retrieval (suffix_index.h) and its Python binding (pybind11 only, no torch
// headers: a short JIT build). Loaded by graft_sglang/retrieval/native.py.
#include "suffix_index.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <cstring>
#include <stdexcept>

namespace graft_suffix {

namespace {

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

[[noreturn]] void fail(const std::string& message) { throw std::invalid_argument(message); }

// _check_tokens of suffix.py, plus the int32 range of the native log.
void to_tokens(const char* name, const int64_t* in, int64_t n, std::vector<int32_t>& out) {
  out.clear();
  if (n == 0) return;
  const auto [lo, hi] = std::minmax_element(in, in + n);
  if (*lo < 0) fail(std::string(name) + " must hold token ids >= 0, got " + std::to_string(*lo));
  if (*hi > INT32_MAX)
    fail(std::string(name) + " must hold token ids < 2^31 (native retriever), got " +
         std::to_string(*hi));
  out.assign(in, in + n);
}

}  // namespace

// -- SuffixIndex -------------------------------------------------------------------------------
SuffixIndex::SuffixIndex(int64_t capacity, int max_match, int max_candidates)
    : capacity_(capacity), max_match_(max_match), max_candidates_(max_candidates) {
  if (capacity < 1 || capacity > kMaxCapacity)
    fail("capacity must be in [1, 2^31 - 1] tokens, got " + std::to_string(capacity));
  if (max_match < kLongestKey)
    fail("max_match must be >= the longest key length 4, got " + std::to_string(max_match));
  if (max_candidates < 1)
    fail("max_candidates must be >= 1, got " + std::to_string(max_candidates));
}

int64_t SuffixIndex::num_keys() const {
  int64_t n = 0;
  for (const Heads& h : heads_) n += h.count;
  return n;
}

int64_t SuffixIndex::memory_bytes() const {
  int64_t bytes = static_cast<int64_t>(log_.capacity() * sizeof(int32_t) +
                                       (run_start_.capacity() + run_ns_.capacity()) * 8);
  for (const Heads& h : heads_)
    bytes += static_cast<int64_t>(h.entries.capacity() * sizeof(HeadEntry));
  bytes += static_cast<int64_t>(links_.capacity() * sizeof(Links));
  return bytes;
}

int64_t SuffixIndex::namespace_at(int64_t pos) const {
  if (run_start_.size() - run_first_ == 1) return run_ns_.back();
  const auto first = run_start_.begin() + static_cast<int64_t>(run_first_);
  return run_ns_[std::upper_bound(first, run_start_.end(), pos) - run_start_.begin() - 1];
}

bool SuffixIndex::key_at(int64_t pos, int k, int32_t* key) const {
  if (pos - k + 1 < start_) return false;
  for (int i = 0; i < k; ++i) {
    key[i] = log_[slot(pos - k + 1 + i)];
    if (key[i] == kSeparator) return false;
  }
  return true;
}

#ifndef GRAFT_SUFFIX_HASH_MASK
#define GRAFT_SUFFIX_HASH_MASK 0x7fffffffu  // a test build narrows it to force collisions
#endif

uint32_t SuffixIndex::key_hash(int64_t ns, const int32_t* key, int k) {
  uint64_t h = static_cast<uint64_t>(ns) * 0x9e3779b97f4a7c15ULL + static_cast<uint64_t>(k);
  for (int i = 0; i < k; ++i) h = (h ^ static_cast<uint32_t>(key[i])) * 0xff51afd7ed558ccdULL;
  return static_cast<uint32_t>(mix(h) >> 33) & GRAFT_SUFFIX_HASH_MASK;  // never kNoKey
}

bool SuffixIndex::same_key(int64_t pos, int k, int64_t ns, const int32_t* key) const {
  if (pos - k + 1 < start_) return false;
  for (int i = 0; i < k; ++i) {
    if (log_[slot(pos - k + 1 + i)] != key[i]) return false;  // key holds no separator
  }
  return namespace_at(pos) == ns;
}

int64_t SuffixIndex::find_key(int ki, int64_t ns, const int32_t* key, uint32_t hash) const {
  const auto& entries = heads_[ki].entries;
  if (entries.empty()) return -1;
  const size_t mask = entries.size() - 1;
  for (size_t e = hash & mask; entries[e].slot != kEmpty; e = (e + 1) & mask) {
    if (entries[e].hash == hash && same_key(position_of(entries[e].slot), kKeyLengths[ki], ns, key))
      return static_cast<int64_t>(e);
  }
  return -1;
}

int64_t SuffixIndex::find_entry(int ki, uint32_t hash, uint32_t s) const {
  // A ring slot holds one position, which has one key per length: (hash, slot) is unique.
  const auto& entries = heads_[ki].entries;
  if (entries.empty()) return -1;
  const size_t mask = entries.size() - 1;
  for (size_t e = hash & mask; entries[e].slot != kEmpty; e = (e + 1) & mask) {
    if (entries[e].slot == s && entries[e].hash == hash) return static_cast<int64_t>(e);
  }
  return -1;
}

int64_t SuffixIndex::replace_head(int ki, int64_t ns, const int32_t* key, uint32_t hash,
                                  int64_t pos) {
  Heads& h = heads_[ki];
  if (2 * (h.count + 1) > static_cast<int64_t>(h.entries.size())) grow_table(ki);  // half empty
  const int k = kKeyLengths[ki];
  const size_t mask = h.entries.size() - 1;
  size_t e = hash & mask;
  for (; h.entries[e].slot != kEmpty; e = (e + 1) & mask) {
    HeadEntry& entry = h.entries[e];
    if (entry.hash != hash) continue;
    const int64_t old = position_of(entry.slot);
    if (same_key(old, k, ns, key)) {
      entry.slot = static_cast<uint32_t>(slot(pos));
      return old;
    }
  }
  h.entries[e] = {static_cast<uint32_t>(slot(pos)), hash};
  ++h.count;
  return -1;
}

void SuffixIndex::grow_table(int ki) {
  Heads& h = heads_[ki];
  std::vector<HeadEntry> old(std::max<size_t>(16, 2 * h.entries.size()), {kEmpty, 0});
  old.swap(h.entries);
  const size_t mask = h.entries.size() - 1;
  for (const HeadEntry& entry : old) {
    if (entry.slot == kEmpty) continue;
    size_t e = entry.hash & mask;
    while (h.entries[e].slot != kEmpty) e = (e + 1) & mask;
    h.entries[e] = entry;
  }
}

void SuffixIndex::erase_entry(int ki, int64_t e) {
  // Backward-shift deletion: move later entries of the probe run into the hole.
  Heads& h = heads_[ki];
  const size_t mask = h.entries.size() - 1;
  size_t hole = static_cast<size_t>(e);
  for (size_t j = (hole + 1) & mask; h.entries[j].slot != kEmpty; j = (j + 1) & mask) {
    const size_t home = h.entries[j].hash & mask;
    // Entry j may move to the hole unless its home lies cyclically in (hole, j].
    const bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!stays) {
      h.entries[hole] = h.entries[j];
      hole = j;
    }
  }
  h.entries[hole] = {kEmpty, 0};
  --h.count;
}

void SuffixIndex::prefetch_entry(int ki, uint32_t hash) const {
  const auto& entries = heads_[ki].entries;
  if (!entries.empty()) __builtin_prefetch(&entries[hash & (entries.size() - 1)]);
}

void SuffixIndex::prefetch_evicted(int64_t evicted) const {
  for (int ki = 0; ki < kNumKeys; ++ki) {
    const int64_t pos = evicted + kKeyLengths[ki] - 1;  // the key starting at evicted
    if (pos >= end_) break;
    const uint32_t hash = links_[slot(pos)].hash[ki];
    if (hash != kNoKey) prefetch_entry(ki, hash);
  }
}

int64_t SuffixIndex::prev_position(int ki, int64_t pos) const {
  const uint32_t d = links_[slot(pos)].prev[ki];
  return d == 0 ? -1 : pos - d;
}

void SuffixIndex::grow() {
  const int64_t size = static_cast<int64_t>(log_.size());
  const int64_t extra = std::min(std::max<int64_t>(size, 256), capacity_ - size);
  log_.reserve(size + extra);  // exact: resize alone may round the allocation up to 2 * size
  log_.resize(size + extra, kSeparator);
  links_.reserve(size + extra);
  links_.resize(size + extra, Links{{0, 0, 0}, {kNoKey, kNoKey, kNoKey}});
}

void SuffixIndex::append(const int32_t* tokens, int64_t n, int64_t ns) {
  for (int64_t i = 0; i < n; ++i) {
    if (tokens[i] < kSeparator)
      fail("token ids must be >= 0 (or SEPARATOR = -1), got " + std::to_string(tokens[i]));
  }
  if (n == 0) return;
  if (ns != run_ns_.back()) {
    const int32_t last = end_ ? log_[slot(end_ - 1)] : kSeparator;
    if (last != kSeparator && tokens[0] != kSeparator)
      fail("namespace " + std::to_string(ns) + " cannot follow namespace " +
           std::to_string(run_ns_.back()) + " without a SEPARATOR between them");
    if (run_start_.back() == end_) {
      run_ns_.back() = ns;
    } else {
      run_start_.push_back(end_);
      run_ns_.push_back(ns);
    }
  }
  // Keys of the first new tokens may start in the last held ones: head holds those (the held
  // run's last 3 tokens at most), then the first new ones; later keys are read from tokens.
  int32_t head[2 * (kLongestKey - 1)];
  const int64_t tail = std::min<int64_t>({kLongestKey - 1, run_, size()});
  for (int64_t j = 0; j < tail; ++j) head[j] = log_[slot(end_ - tail + j)];
  for (int64_t j = 0; j < std::min<int64_t>(kLongestKey - 1, n); ++j) head[tail + j] = tokens[j];
  const auto key_end = [&](int64_t i) {  // one past the last token of token i's keys
    return i >= kLongestKey - 1 ? tokens + i + 1 : head + tail + i + 1;
  };
  // The keys' hashes, a chunk at a time (bounded scratch), each chunk with the prefetch
  // distance's lookahead: kNoKey where a key would hold a separator or start before head.
  constexpr int64_t kChunk = 1024;
  thread_local std::vector<uint32_t> hashes;
  int32_t key_run = static_cast<int32_t>(std::min<int64_t>(run_, kLongestKey));
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t stop = std::min(n, c + kChunk), ahead = std::min(n, stop + kPrefetchDistance);
    hashes.resize(static_cast<size_t>(ahead - c) * kNumKeys);
    int32_t run = key_run;  // non-separator tokens ending at token i, capped at the longest key
    for (int64_t i = c; i < ahead; ++i) {
      run = tokens[i] == kSeparator ? 0 : std::min<int32_t>(run + 1, kLongestKey);
      if (i + 1 == stop) key_run = run;
      const int64_t avail = std::min<int64_t>(run, i >= kLongestKey - 1 ? i + 1 : tail + i + 1);
      for (int ki = 0; ki < kNumKeys; ++ki) {
        const int k = kKeyLengths[ki];
        hashes[(i - c) * kNumKeys + ki] = k <= avail ? key_hash(ns, key_end(i) - k, k) : kNoKey;
      }
    }
    for (int64_t i = c; i < stop; ++i) {
      const int64_t pos = end_;
      if (i + kPrefetchDistance < ahead) {
        for (int ki = 0; ki < kNumKeys; ++ki) {
          const uint32_t hash = hashes[(i + kPrefetchDistance - c) * kNumKeys + ki];
          if (hash != kNoKey) prefetch_entry(ki, hash);
        }
      }
      if (pos - start_ == capacity_) {
        prefetch_evicted(start_ + kPrefetchDistance);
        evict_oldest();
      } else if (pos == static_cast<int64_t>(log_.size())) {
        grow();
      }
      const int32_t t = tokens[i];
      const int64_t s = slot(pos);
      log_[s] = t;
      end_ = pos + 1;
      run_ = t == kSeparator ? 0 : run_ + 1;
      Links& links = links_[s];
      for (int ki = 0; ki < kNumKeys; ++ki) {
        const int k = kKeyLengths[ki];
        if (k > run_ || pos - k + 1 < start_) {
          links.prev[ki] = 0;
          links.hash[ki] = kNoKey;
          continue;
        }
        const uint32_t hash = hashes[(i - c) * kNumKeys + ki];
        const int64_t old = replace_head(ki, ns, key_end(i) - k, hash, pos);
        // Distances past the capacity point at evicted text: saturating is exact.
        links.prev[ki] =
            old < 0 ? 0 : static_cast<uint32_t>(std::min<int64_t>(pos - old, UINT32_MAX));
        links.hash[ki] = hash;
      }
    }
  }
}

void SuffixIndex::blank(int64_t first, int64_t last) {
  first = std::max(first, start_);
  last = std::min(last, end_);
  if (first >= last) return;
  struct Stale {
    int ki;
    int64_t pos, ns;
    uint32_t hash;
    int32_t key[kLongestKey];
  };
  // Heads of keys that reach into the range (they end in [first, last + longest - 1)).
  std::vector<Stale> stale;
  for (int64_t pos = first; pos < std::min(last + kLongestKey - 1, end_); ++pos) {
    for (int ki = 0; ki < kNumKeys; ++ki) {
      const int k = kKeyLengths[ki];
      uint32_t& hash = links_[slot(pos)].hash[ki];
      Stale s{ki, pos, 0, hash, {}};
      if (pos - k + 1 >= last || hash == kNoKey || !key_at(pos, k, s.key)) continue;
      hash = kNoKey;  // the key's text goes
      s.ns = namespace_at(pos);
      if (find_entry(ki, s.hash, static_cast<uint32_t>(slot(pos))) >= 0) stale.push_back(s);
    }
  }
  for (int64_t pos = first; pos < last; ++pos) log_[slot(pos)] = kSeparator;
  for (const Stale& s : stale) {  // point each head at its newest intact occurrence, or drop it
    const int k = kKeyLengths[s.ki];
    const int64_t e = find_entry(s.ki, s.hash, static_cast<uint32_t>(slot(s.pos)));
    int64_t q = prev_position(s.ki, s.pos);
    while (q >= start_ + k - 1 && !same_key(q, k, s.ns, s.key)) q = prev_position(s.ki, q);
    if (q >= start_ + k - 1) {
      heads_[s.ki].entries[e].slot = static_cast<uint32_t>(slot(q));
    } else {
      erase_entry(s.ki, e);
    }
  }
  run_ = std::min(run_, end_ - last);
}

void SuffixIndex::evict_oldest() {
  // Drop the oldest token: a key starting there whose newest occurrence it is dies.
  const int64_t s = start_;
  for (int ki = 0; ki < kNumKeys; ++ki) {
    const int64_t pos = s + kKeyLengths[ki] - 1;
    if (pos >= end_) break;
    const uint32_t hash = links_[slot(pos)].hash[ki];
    if (hash == kNoKey) continue;
    const int64_t e = find_entry(ki, hash, static_cast<uint32_t>(slot(pos)));
    if (e >= 0) erase_entry(ki, e);
  }
  start_ = s + 1;
  start_slot_ = start_slot_ + 1 == capacity_ ? 0 : start_slot_ + 1;
  if (run_first_ + 1 < run_start_.size() && run_start_[run_first_ + 1] <= start_) {
    ++run_first_;
    if (run_first_ > 16 && 2 * run_first_ > run_start_.size()) {  // amortized O(1)
      run_start_.erase(run_start_.begin(), run_start_.begin() + static_cast<int64_t>(run_first_));
      run_ns_.erase(run_ns_.begin(), run_ns_.begin() + static_cast<int64_t>(run_first_));
      run_first_ = 0;
    }
  }
}

int SuffixIndex::match(const int32_t* ctx, int len, int64_t ns,
                       std::vector<int64_t>& positions) const {
  const int limit = std::min(max_match_, len);
  const int32_t* back = ctx + len;  // back[-1] is the context's last token
  for (int ki = kNumKeys - 1; ki >= 0; --ki) {
    const int k = kKeyLengths[ki];
    if (limit < k) continue;
    const int64_t e = find_key(ki, ns, back - k, key_hash(ns, back - k, k));
    int64_t q = e < 0 ? -1 : position_of(heads_[ki].entries[e].slot);
    int best = 0;
    positions.clear();
    for (int step = 0; step < max_candidates_; ++step) {
      if (q < start_ + k - 1) break;  // older occurrences are evicted too
      if (q + 1 < end_ && log_[slot(q + 1)] != kSeparator) {  // blanked ones fail this
        int length = 0;
        while (length < limit && q - length >= start_ &&
               log_[slot(q - length)] == back[-length - 1])
          ++length;
        if (length >= k) {
          if (length > best) {
            best = length;
            positions.assign(1, q);
          } else if (length == best) {
            positions.push_back(q);
          }
        }
      }
      q = prev_position(ki, q);
    }
    if (!positions.empty()) return best;
  }
  positions.clear();
  return 0;
}

void SuffixIndex::copy_tokens(int64_t first, int64_t last, std::vector<int32_t>& out) const {
  for (int64_t p = std::max(first, start_); p < std::min(last, end_); ++p)
    out.push_back(log_[slot(p)]);
}

// -- Retriever ---------------------------------------------------------------------------------
Retriever::Retriever(const Config& config)
    : cfg_(config), shared_(config.shared_capacity, config.max_match, config.max_occurrences) {
  if (config.request_capacity < 1 || config.request_capacity > kMaxCapacity)
    fail("SuffixConfig.request_capacity must be in [1, 2^31 - 1] for the native retriever, got " +
         std::to_string(config.request_capacity));
}

int64_t Retriever::request_memory_bytes() const {
  int64_t bytes = 0;
  for (const auto& entry : requests_) bytes += entry.second.index.memory_bytes();
  return bytes;
}

Retriever::Request& Retriever::request(const std::string& rid) {
  auto it = requests_.find(rid);
  if (it == requests_.end())
    fail("unknown request '" + rid + "' (start_request was not called)");
  return it->second;
}

void Retriever::start_request(const std::string& rid, const int64_t* prompt, int64_t n,
                              int64_t ns) {
  if (requests_.count(rid)) fail("request '" + rid + "' already started");
  to_tokens("prompt", prompt, n, tokens_);
  Request req{SuffixIndex(cfg_.request_capacity, cfg_.max_match, cfg_.max_occurrences), ns};
  req.index.append(tokens_.data(), static_cast<int64_t>(tokens_.size()), 0);
  requests_.emplace(rid, std::move(req));
}

void Retriever::extend_request(const std::string& rid, const int64_t* tokens, int64_t n) {
  to_tokens("tokens", tokens, n, tokens_);
  request(rid).index.append(tokens_.data(), static_cast<int64_t>(tokens_.size()), 0);
}

void Retriever::finish_request(const std::string& rid) {
  auto it = requests_.find(rid);
  if (it == requests_.end()) return;
  const SuffixIndex& index = it->second.index;
  if (finished_to_corpus && index.size()) {
    Change change{{}, it->second.ns, -1, false};
    index.copy_tokens(index.start(), index.end(), change.tokens);
    enqueue(std::move(change));
  }
  requests_.erase(it);
}

void Retriever::append_document(std::vector<int32_t>& tokens, int64_t ns, int64_t handle) {
  const int64_t first = shared_.end();
  tokens.push_back(kSeparator);
  shared_.append(tokens.data(), static_cast<int64_t>(tokens.size()), ns);
  const int64_t last = shared_.end() - 1;
  documents_.push_back({last, handle});
  if (handle >= 0) corpora_[handle] = {first, last};
  while (!documents_.empty() && documents_.front().last <= shared_.start()) {
    if (documents_.front().handle >= 0) corpora_.erase(documents_.front().handle);
    documents_.pop_front();
  }
}

int64_t Retriever::add_corpus(const int64_t* tokens, int64_t n, int64_t ns) {
  Change change{{}, ns, next_handle_, false};
  to_tokens("tokens", tokens, n, change.tokens);
  ++next_handle_;
  enqueue(std::move(change));
  return next_handle_ - 1;
}

void Retriever::remove_corpus(int64_t handle) {
  if (handle < 0 || handle >= next_handle_)
    fail("handle must be one returned by add_corpus, in [0, " + std::to_string(next_handle_) +
         "), got " + std::to_string(handle));
  enqueue({{}, 0, handle, true});
}

void Retriever::apply(Change& change) {
  if (!change.remove) {
    append_document(change.tokens, change.ns, change.handle);
    return;
  }
  auto it = corpora_.find(change.handle);
  if (it == corpora_.end()) return;  // already evicted or removed
  const Span span = it->second;
  corpora_.erase(it);
  shared_.blank(span.first, span.last);
}

void Retriever::enqueue(Change change) {
  std::lock_guard<std::mutex> lock(mutex_);
  queue_.push_back(std::move(change));
  if (!running_) {  // an idle retriever has no thread, so a fork finds none to lose
    running_ = true;
    std::thread(&Retriever::index_queue, this).detach();
  }
}

void Retriever::index_queue() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!queue_.empty() && !stopping_ && !failure_) {
    Change change = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    try {
      apply(change);
      lock.lock();
    } catch (...) {
      lock.lock();
      failure_ = std::current_exception();
      queue_.clear();
    }
  }
  running_ = false;
  // Waiters wake once this thread is gone: none can destroy the retriever under it.
  std::notify_all_at_thread_exit(changed_, std::move(lock));
}

void Retriever::settle() {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [this] { return !running_; });
  if (failure_) std::rethrow_exception(failure_);
}

Retriever::~Retriever() {
  std::unique_lock<std::mutex> lock(mutex_);
  stopping_ = true;
  changed_.wait(lock, [this] { return !running_; });
}

void Retriever::propose(const std::string& rid, const std::vector<int64_t>& suffix,
                        int64_t max_nodes, Trie& out) {
  if (max_nodes < 0) fail("max_nodes must be >= 0, got " + std::to_string(max_nodes));
  std::vector<int32_t> path;
  to_tokens("suffix", suffix.data(), static_cast<int64_t>(suffix.size()), path);
  settle();
  propose_request(request(rid), path.data(), static_cast<int>(path.size()), max_nodes, out);
}

void Retriever::propose_request(const Request& req, const int32_t* suffix, int suffix_len,
                                int64_t max_nodes, Trie& out) {
  out.tokens.clear();
  out.parents.clear();
  out.probs.clear();
  const SuffixIndex& own = req.index;
  const int tail_len = std::max(0, cfg_.max_match - suffix_len);
  context_.clear();
  own.copy_tokens(own.end() - tail_len, own.end(), context_);
  context_.insert(context_.end(), suffix, suffix + suffix_len);
  const int len = static_cast<int>(std::min<size_t>(context_.size(), cfg_.max_match));
  const int32_t* ctx = context_.data() + context_.size() - len;
  if (max_nodes == 0 || len == 0) return;
  const int own_len = own.match(ctx, len, 0, own_positions_);
  const int shared_len = shared_.match(ctx, len, req.ns, shared_positions_);
  const int best = std::max(own_len, shared_len);
  if (best < cfg_.min_match) return;
  arena_.clear();
  if (own_len == best) {
    for (int64_t pos : own_positions_) arena_.push_back({&own, pos, cfg_.own_weight});
  }
  if (shared_len == best) {
    for (int64_t pos : shared_positions_) arena_.push_back({&shared_, pos, 1.0});
  }
  best_first(best, max_nodes, out);
}

void Retriever::expand(int64_t group, int64_t group_len, int parent, double parent_prob,
                       int depth, int match_len) {
  if (depth == cfg_.max_depth) return;
  const double confidence =
      1.0 - std::exp(-static_cast<double>(match_len + depth) / cfg_.confidence_scale);
  double total = 0.0;
  children_.clear();
  child_of_.resize(group_len);
  for (int64_t i = 0; i < group_len; ++i) {
    const Occurrence& o = arena_[group + i];
    total += o.weight;  // occurrences whose text ends here still count: they stop
    const int32_t token = o.index->next_token(o.pos);
    child_of_[i] = -1;
    if (token == kSeparator) continue;
    size_t c = 0;
    while (c < children_.size() && children_[c].token != token) ++c;
    if (c == children_.size()) {
      children_.push_back({token, o.weight, 0, 0});
    } else {
      children_[c].weight += o.weight;
    }
    ++children_[c].count;
    child_of_[i] = static_cast<int64_t>(c);
  }
  // Each child's occurrences (in the parent's order) go to the arena's end, child by child.
  int64_t base = static_cast<int64_t>(arena_.size());
  for (Child& c : children_) {
    c.cursor = base;
    base += c.count;
  }
  arena_.resize(base);
  for (int64_t i = 0; i < group_len; ++i) {
    if (child_of_[i] < 0) continue;
    const Occurrence o = arena_[group + i];
    arena_[children_[child_of_[i]].cursor++] = {o.index, o.pos + 1, o.weight};
  }
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.neg_prob > b.neg_prob || (a.neg_prob == b.neg_prob && a.order > b.order);
  };
  for (const Child& c : children_) {
    const double cond = c.weight / total * confidence;
    heap_.push_back({-parent_prob * cond, order_++, parent, depth + 1, c.token, cond,
                     c.cursor - c.count, c.count});
    std::push_heap(heap_.begin(), heap_.end(), later);
  }
}

void Retriever::best_first(int match_len, int64_t max_nodes, Trie& out) {
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.neg_prob > b.neg_prob || (a.neg_prob == b.neg_prob && a.order > b.order);
  };
  heap_.clear();
  order_ = 0;
  expand(0, static_cast<int64_t>(arena_.size()), -1, 1.0, 0, match_len);
  for (int64_t node = 0; node < max_nodes && !heap_.empty(); ++node) {
    std::pop_heap(heap_.begin(), heap_.end(), later);
    const Candidate c = heap_.back();
    heap_.pop_back();
    out.tokens.push_back(c.token);
    out.parents.push_back(c.parent);
    out.probs.push_back(c.cond);
    expand(c.group, c.group_len, static_cast<int>(node), -c.neg_prob, c.depth, match_len);
  }
}

void Retriever::retrieve_packed(const std::vector<std::string>& rids, const int64_t* anchors,
                                int64_t num_anchors, const int64_t* draft_tokens,
                                const int64_t* draft_parents, int64_t num_draft,
                                int64_t root_nodes, int64_t anchor_nodes, int64_t max_slots,
                                uint8_t* out) {
  for (int64_t n : {root_nodes, anchor_nodes})
    if (n < 0) fail("max_nodes must be >= 0, got " + std::to_string(n));
  if (max_slots < 0) fail("max_slots must be >= 0, got " + std::to_string(max_slots));
  settle();
  const int64_t bs = static_cast<int64_t>(rids.size()), cells = bs * max_slots;
  std::vector<const Request*> reqs;
  for (const std::string& rid : rids) reqs.push_back(&request(rid));
  // Every anchor's draft path (root's child first), validated before anything is answered.
  std::vector<int32_t> paths;
  std::vector<int64_t> path_end(bs * num_anchors + 1, 0);
  for (int64_t b = 0; b < bs; ++b) {
    for (int64_t j = 0; j < num_anchors; ++j) {
      const int64_t begin = static_cast<int64_t>(paths.size());
      int64_t node = anchors[b * num_anchors + j];
      if (node >= num_draft)
        fail("anchor " + std::to_string(node) + " out of range [-1, " +
             std::to_string(num_draft) + ")");
      while (node >= 0) {
        const int64_t token = draft_tokens[b * num_draft + node];
        if (token < 0 || token > INT32_MAX)
          fail("suffix must hold token ids in [0, 2^31), got " + std::to_string(token));
        paths.push_back(static_cast<int32_t>(token));
        const int64_t parent = draft_parents[b * num_draft + node];
        if (parent >= node)
          fail("draft parents[" + std::to_string(node) + "] = " + std::to_string(parent) +
               "; must be < " + std::to_string(node));
        node = parent;
      }
      std::reverse(paths.begin() + begin, paths.end());
      path_end[b * num_anchors + j + 1] = static_cast<int64_t>(paths.size());
    }
  }
  auto* tokens = reinterpret_cast<int64_t*>(out);
  int64_t* parents = tokens + cells;
  int64_t* anchor_out = parents + cells;
  auto* probs = reinterpret_cast<float*>(anchor_out + cells);
  auto* valid = reinterpret_cast<uint8_t*>(probs + cells);
  std::fill(tokens, tokens + cells, 0);
  std::fill(parents, parents + 2 * cells, -1);  // parents and anchors
  std::fill(probs, probs + cells, 0.0f);
  std::fill(valid, valid + cells, 0);
  Trie trie;
  std::vector<double> path_prob;
  for (int64_t b = 0; b < bs; ++b) {
    int64_t n = 0;
    for (int64_t j = -1; j < num_anchors && n < max_slots; ++j) {
      const int64_t anchor = j < 0 ? -1 : anchors[b * num_anchors + j];
      if (j >= 0 && anchor < 0) continue;  // padding
      const int64_t begin = j < 0 ? 0 : path_end[b * num_anchors + j];
      const int64_t len = j < 0 ? 0 : path_end[b * num_anchors + j + 1] - begin;
      // Best-first tries are prefixes of each other: asking only for the nodes that fit
      // gives the nodes pack_retrieved keeps.
      const int64_t wanted = std::min(j < 0 ? root_nodes : anchor_nodes, max_slots - n);
      propose_request(*reqs[b], paths.data() + begin, static_cast<int>(len), wanted, trie);
      const int64_t first_slot = n;
      path_prob.clear();
      for (size_t i = 0; i < trie.tokens.size(); ++i, ++n) {
        const int32_t par = trie.parents[i];
        const double prob = trie.probs[i] * (par < 0 ? 1.0 : path_prob[par]);
        path_prob.push_back(prob);
        const int64_t cell = b * max_slots + n;
        tokens[cell] = trie.tokens[i];
        parents[cell] = par < 0 ? anchor : num_draft + first_slot + par;
        anchor_out[cell] = anchor;
        probs[cell] = static_cast<float>(prob);
        valid[cell] = 1;
      }
    }
  }
}

}  // namespace graft_suffix

// -- binding -------------------------------------------------------------------------------------
namespace py = pybind11;
using graft_suffix::Retriever;

namespace {

// Token ids from Python: a 1-d int64 buffer (array('q'), a numpy array) is read in place, any
// other sequence of ints is converted.
class TokenIds {
 public:
  explicit TokenIds(const py::handle& tokens) {
    if (PyObject_CheckBuffer(tokens.ptr())) {
      view_ = py::reinterpret_borrow<py::buffer>(tokens).request();
      if (view_.ndim == 1 && view_.itemsize == 8 &&
          (view_.format == "q" || view_.format == "l") &&
          (view_.shape[0] < 2 || view_.strides[0] == 8)) {
        data_ = static_cast<const int64_t*>(view_.ptr);
        size_ = view_.shape[0];
        return;
      }
    }
    owned_ = tokens.cast<std::vector<int64_t>>();
    data_ = owned_.data();
    size_ = static_cast<int64_t>(owned_.size());
  }
  const int64_t* data() const { return data_; }
  int64_t size() const { return size_; }

 private:
  py::buffer_info view_;  // held (not released) while the ids are read in place
  std::vector<int64_t> owned_;
  const int64_t* data_ = nullptr;
  int64_t size_ = 0;
};

// A C-contiguous buffer of ``ndim`` dims with items of ``itemsize`` bytes.
py::buffer_info checked(const py::buffer& buffer, const char* name, int ndim,
                        py::ssize_t itemsize, bool writable) {
  py::buffer_info info = buffer.request(writable);
  if (info.ndim != ndim || info.itemsize != itemsize)
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(ndim) +
                                "-d items of " + std::to_string(itemsize) + " bytes");
  py::ssize_t stride = itemsize;
  for (int d = ndim - 1; d >= 0; --d) {
    if (info.shape[d] > 1 && info.strides[d] != stride)
      throw std::invalid_argument(std::string(name) + " must be C-contiguous");
    stride *= info.shape[d];
  }
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native suffix retrieval (graft_sglang.retrieval.native)";
  py::class_<Retriever>(m, "Retriever", py::module_local())  // test builds load beside it
      .def(py::init([](int64_t shared_capacity, int64_t request_capacity, int min_match,
                       int max_match, int max_depth, int max_occurrences, double own_weight,
                       double confidence_scale) {
             return new Retriever({shared_capacity, request_capacity, min_match, max_match,
                                   max_depth, max_occurrences, own_weight, confidence_scale});
           }))
      .def("start_request",
           [](Retriever& r, const std::string& rid, const py::handle& prompt, int64_t ns) {
             const TokenIds ids(prompt);
             r.start_request(rid, ids.data(), ids.size(), ns);
           })
      .def("extend_request",
           [](Retriever& r, const std::string& rid, const py::handle& tokens) {
             const TokenIds ids(tokens);
             r.extend_request(rid, ids.data(), ids.size());
           })
      .def("finish_request", &Retriever::finish_request)
      .def("add_corpus",
           [](Retriever& r, const py::handle& tokens, int64_t ns) {
             const TokenIds ids(tokens);
             return r.add_corpus(ids.data(), ids.size(), ns);
           })
      .def("remove_corpus", &Retriever::remove_corpus)
      .def("settle", &Retriever::settle)
      .def("propose",
           [](Retriever& r, const std::string& rid, const std::vector<int64_t>& suffix,
              int64_t max_nodes) {
             graft_suffix::Trie trie;
             r.propose(rid, suffix, max_nodes, trie);
             return py::make_tuple(trie.tokens, trie.parents, trie.probs);
           })
      .def("retrieve_packed",
           [](Retriever& r, const std::vector<std::string>& rids, const py::buffer& anchors,
              const py::buffer& draft_tokens, const py::buffer& draft_parents,
              int64_t root_nodes, int64_t anchor_nodes, int64_t max_slots,
              const py::buffer& out) {
             const auto a = checked(anchors, "anchors", 2, 8, false);
             const auto t = checked(draft_tokens, "draft_tokens", 2, 8, false);
             const auto p = checked(draft_parents, "draft_parents", 2, 8, false);
             const auto o = checked(out, "out", 1, 1, true);
             const auto bs = static_cast<py::ssize_t>(rids.size());
             if (a.shape[0] != bs || t.shape[0] != bs || p.shape[0] != bs ||
                 t.shape[1] != p.shape[1])
               throw std::invalid_argument(
                   "retrieve_packed needs one row per request and draft_tokens shaped like "
                   "draft_parents");
             if (o.shape[0] != bs * std::max<int64_t>(max_slots, 0) * 29)
               throw std::invalid_argument("out must hold 29 bytes per packed slot");
             r.retrieve_packed(rids, static_cast<const int64_t*>(a.ptr), a.shape[1],
                               static_cast<const int64_t*>(t.ptr),
                               static_cast<const int64_t*>(p.ptr), t.shape[1], root_nodes,
                               anchor_nodes, max_slots, static_cast<uint8_t*>(o.ptr));
           })
      .def_property_readonly("shared_size", &Retriever::shared_size)
      .def_property_readonly("shared_keys", &Retriever::shared_keys)
      .def_property_readonly("shared_memory_bytes", &Retriever::shared_memory_bytes)
      .def_property_readonly("request_memory_bytes", &Retriever::request_memory_bytes)
      .def_property_readonly("num_documents", &Retriever::num_documents)
      .def_property_readonly("num_corpora", &Retriever::num_corpora)
      .def_readwrite("finished_to_corpus", &Retriever::finished_to_corpus);
}
