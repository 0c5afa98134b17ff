// Native suffix retrieval: the same answers as graft_sglang/retrieval/suffix_index.py and
// suffix.py (the Python implementation is the test oracle; their docstrings give the
// algorithm). Plain C++17, no Python or torch types: the binding is in suffix_index.cpp.
//
// Memory per index, bounded by its capacity C (tokens): the log (int32, 4 bytes per token) and
// per token and key length the distance to the key's previous occurrence and the key's hash
// (uint32 each, 24 bytes per token), grown by doubling up to C; one open-addressing table of
// chain heads per key length holding at most C keys in 2-4 slots per key once grown (8 bytes per
// slot); 16 bytes per namespace run held. In all at most 4 + 24 + 3 * 32 = 124 bytes per token
// of C, plus the runs and the tables' 16-slot minimum.
//
// Costs: appending a token is O(1) expected: one probe of a half-empty table per key length to
// index it and, once full, one per key length to drop the keys of the token it evicts (found by
// their stored hashes). Every probe's table slot is fetched a few tokens ahead, so the probes'
// cache misses overlap.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace graft_suffix {

constexpr int32_t kSeparator = -1;
constexpr int kNumKeys = 3;
constexpr int kKeyLengths[kNumKeys] = {1, 2, 4};  // SuffixIndex's default key_lengths
constexpr int kLongestKey = 4;
constexpr int64_t kMaxCapacity = (int64_t{1} << 31) - 1;  // ring slots fit in 31 bits

// The Python SuffixIndex (module docstring there), namespaces included.
class SuffixIndex {
 public:
  SuffixIndex(int64_t capacity, int max_match, int max_candidates);

  int64_t start() const { return start_; }
  int64_t end() const { return end_; }
  int64_t size() const { return end_ - start_; }
  int64_t num_keys() const;
  int64_t memory_bytes() const;  // held by the log, chains, head tables and namespace runs
  int64_t num_namespace_runs() const {
    return static_cast<int64_t>(run_start_.size() - run_first_);
  }

  // tokens: ids >= 0 or kSeparator. Throws std::invalid_argument for a namespace change with
  // no separator at the boundary.
  void append(const int32_t* tokens, int64_t n, int64_t ns);
  void blank(int64_t first, int64_t last);
  // Longest suffix of ctx[0, len) (at most max_match tokens) occurring in namespace ns with a
  // token after it; fills positions (newest first) and returns the length (0 = none).
  int match(const int32_t* ctx, int len, int64_t ns, std::vector<int64_t>& positions) const;
  int32_t next_token(int64_t pos) const {
    return pos + 1 >= end_ ? kSeparator : log_[slot(pos + 1)];
  }
  // Appends the held tokens of [first, last) to out.
  void copy_tokens(int64_t first, int64_t last, std::vector<int32_t>& out) const;

 private:
  struct HeadEntry {
    uint32_t slot;  // ring slot of the newest occurrence's last token; kEmpty = free
    uint32_t hash;  // hash of the key (namespace + tokens)
  };
  struct Heads {
    std::vector<HeadEntry> entries;  // power-of-two size, linear probing
    int64_t count = 0;
  };
  static constexpr uint32_t kEmpty = UINT32_MAX;
  static constexpr uint32_t kNoKey = UINT32_MAX;  // hashes are below 2^31
  static constexpr int64_t kPrefetchDistance = 16;  // tokens ahead whose table slots are fetched

  // The ring slot of a held position (start_ <= pos < start_ + capacity_), with no division.
  int64_t slot(int64_t pos) const {
    const int64_t s = start_slot_ + (pos - start_);
    return s >= capacity_ ? s - capacity_ : s;
  }
  int64_t position_of(uint32_t s) const {  // the held position in ring slot s
    const int64_t d = static_cast<int64_t>(s) - start_slot_;
    return start_ + (d < 0 ? d + capacity_ : d);
  }
  int64_t namespace_at(int64_t pos) const;
  // The k tokens ending at pos into key; false if not all held or one is a separator.
  bool key_at(int64_t pos, int k, int32_t* key) const;
  static uint32_t key_hash(int64_t ns, const int32_t* key, int k);
  bool same_key(int64_t pos, int k, int64_t ns, const int32_t* key) const;
  int64_t find_key(int ki, int64_t ns, const int32_t* key, uint32_t hash) const;
  int64_t find_entry(int ki, uint32_t hash, uint32_t s) const;
  // Makes pos the head of (ns, key); returns the previous head, or -1.
  int64_t replace_head(int ki, int64_t ns, const int32_t* key, uint32_t hash, int64_t pos);
  void grow_table(int ki);
  void erase_entry(int ki, int64_t e);
  void prefetch_entry(int ki, uint32_t hash) const;
  // Fetches the table slots of the keys that evicting position evicted drops.
  void prefetch_evicted(int64_t evicted) const;
  int64_t prev_position(int ki, int64_t pos) const;
  void grow();
  void evict_oldest();

  int64_t capacity_;
  int max_match_, max_candidates_;
  std::vector<int32_t> log_;
  struct Links {  // per position, of the key of each length that ends there
    uint32_t prev[kNumKeys];  // distance to the key's previous occurrence; 0 = none
    uint32_t hash[kNumKeys];  // the key's hash; kNoKey = no key (a separator, or blanked)
  };
  std::vector<Links> links_;
  Heads heads_[kNumKeys];
  int64_t start_ = 0, end_ = 0, run_ = 0;
  int64_t start_slot_ = 0;  // slot(start_)
  // Namespace runs: text from run_start_[i] on is in namespace run_ns_[i] (from run_first_ on).
  std::vector<int64_t> run_start_{0}, run_ns_{0};
  size_t run_first_ = 0;
};

struct Config {
  int64_t shared_capacity, request_capacity;
  int min_match, max_match, max_depth, max_occurrences;
  double own_weight, confidence_scale;
};

// A proposal trie (Continuations).
struct Trie {
  std::vector<int32_t> tokens, parents;
  std::vector<double> probs;
};

// The Python SuffixRetriever. Tenants are namespace ids managed by the caller's
// TenantRegistry (native.py, which also tracks which documents the ring holds).
//
// Corpus changes in the background: add_corpus, remove_corpus and finish_request (its text, a
// copy) check their arguments, queue the change and return; one indexing thread applies the
// queue in order, and every call that reads the corpus first waits until the queue is applied
// (settle). Every answer is therefore the one of applying each change at its call, on every
// rank alike, while the indexing overlaps whatever the caller does until its next reading call.
class Retriever {
 public:
  explicit Retriever(const Config& config);
  ~Retriever();
  Retriever(const Retriever&) = delete;
  Retriever& operator=(const Retriever&) = delete;

  // Token arguments: n int64 ids (tokens[0, n)).
  void start_request(const std::string& rid, const int64_t* prompt, int64_t n, int64_t ns);
  void extend_request(const std::string& rid, const int64_t* tokens, int64_t n);
  void finish_request(const std::string& rid);
  void propose(const std::string& rid, const std::vector<int64_t>& suffix, int64_t max_nodes,
               Trie& out);
  int64_t add_corpus(const int64_t* tokens, int64_t n, int64_t ns);
  void remove_corpus(int64_t handle);

  // Every query of a step, packed as pack_retrieved packs them. anchors [bs, num_anchors],
  // draft_tokens / draft_parents [bs, num_draft] (row-major); out: the packed fields back to
  // back, tokens / parents / anchors int64, path_probs float32, valid uint8, each [bs, max_slots].
  void retrieve_packed(const std::vector<std::string>& rids, const int64_t* anchors,
                       int64_t num_anchors, const int64_t* draft_tokens,
                       const int64_t* draft_parents, int64_t num_draft, int64_t root_nodes,
                       int64_t anchor_nodes, int64_t max_slots, uint8_t* out);

  // Waits until every queued corpus change is applied; rethrows an error the indexing thread
  // met (std::bad_alloc).
  void settle();

  int64_t shared_size() {
    settle();
    return shared_.size();
  }
  int64_t shared_memory_bytes() {
    settle();
    return shared_.memory_bytes();
  }
  int64_t request_memory_bytes() const;
  int64_t shared_keys() {
    settle();
    return shared_.num_keys();
  }
  int64_t num_documents() {
    settle();
    return static_cast<int64_t>(documents_.size());
  }
  int64_t num_corpora() {
    settle();
    return static_cast<int64_t>(corpora_.size());
  }
  // Whether a finished request's text joins its tenant's corpus (SuffixRetriever's
  // finished_to_corpus).
  bool finished_to_corpus = true;

 private:
  struct Request {
    SuffixIndex index;
    int64_t ns;
  };
  struct Occurrence {
    const SuffixIndex* index;
    int64_t pos;
    double weight;
  };
  struct Candidate {  // a heap entry: a trie node not taken yet
    double neg_prob;
    int64_t order;
    int parent, depth;
    int32_t token;
    double cond;
    int64_t group, group_len;  // its occurrences in arena_
  };
  struct Child {
    int32_t token;
    double weight;
    int64_t count, cursor;
  };
  struct Document {
    int64_t last, handle;  // handle -1: a finished request's text
  };
  struct Span {
    int64_t first, last;
  };

  Request& request(const std::string& rid);
  void propose_request(const Request& req, const int32_t* suffix, int suffix_len,
                       int64_t max_nodes, Trie& out);
  void best_first(int match_len, int64_t max_nodes, Trie& out);
  void expand(int64_t group, int64_t group_len, int parent, double parent_prob, int depth,
              int match_len);
  void append_document(std::vector<int32_t>& tokens, int64_t ns, int64_t handle);
  struct Change {  // queued: tokens of namespace ns added as handle (-1: finished text), or
                   // handle removed
    std::vector<int32_t> tokens;
    int64_t ns, handle;
    bool remove;
  };
  void apply(Change& change);
  void enqueue(Change change);
  void index_queue();  // the indexing thread: applies the queue until it is empty

  Config cfg_;
  SuffixIndex shared_;
  std::unordered_map<std::string, Request> requests_;
  std::deque<Document> documents_;
  std::unordered_map<int64_t, Span> corpora_;
  int64_t next_handle_ = 0;
  // Scratch reused across proposals.
  std::vector<int32_t> context_, tokens_;
  std::vector<int64_t> own_positions_, shared_positions_;
  std::vector<Occurrence> arena_;
  std::vector<Candidate> heap_;
  std::vector<Child> children_;
  std::vector<int64_t> child_of_;
  int64_t order_ = 0;
  // The queue of corpus changes. A thread runs while it is not empty (running_), and only it
  // touches shared_, documents_ and corpora_ then.
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Change> queue_;
  bool running_ = false, stopping_ = false;
  std::exception_ptr failure_;
};

}  // namespace graft_suffix
