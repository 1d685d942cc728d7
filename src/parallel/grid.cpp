#include "parallel/grid.h"

#include <algorithm>

#include "core/check.h"

namespace ff {

namespace {
constexpr EnumName<MoeDispatcher> kDispatchers[] = {{MoeDispatcher::alltoall, "alltoall"},
                                                    {MoeDispatcher::allgather, "allgather"},
                                                    {MoeDispatcher::alltoall_dedup, "alltoall_dedup"}};
}
std::span<const EnumName<MoeDispatcher>> enum_names(MoeDispatcher) { return kDispatchers; }
namespace {
constexpr EnumName<CpComm> kCpComms[] = {{CpComm::ring, "ring"}, {CpComm::all_gather, "all_gather"}};
}
std::span<const EnumName<CpComm>> enum_names(CpComm) { return kCpComms; }

std::vector<std::string> ParallelConfig::validate(int64_t world) const {
  std::vector<std::string> e;
  auto positive = [&](int64_t v, const char* name) {
    if (v < 1) e.push_back(strprintf("parallel.%s = %lld: must be >= 1", name, (long long)v));
  };
  positive(tp, "tp");
  positive(cp, "cp");
  positive(pp, "pp");
  positive(virtual_stages, "virtual_stages");
  positive(ep, "ep");
  if (etp < 0) e.push_back(strprintf("parallel.etp = %lld: must be >= 0 (0 = same as tp)", (long long)etp));
  if (!e.empty()) return e;
  if (world % (tp * cp * pp) != 0)
    e.push_back(strprintf("world size %lld is not divisible by tp*cp*pp = %lld*%lld*%lld; change the rank count or the sizes",
                          (long long)world, (long long)tp, (long long)cp, (long long)pp));
  if (world % (expert_tp() * ep * pp) != 0)
    e.push_back(strprintf("world size %lld is not divisible by etp*ep*pp = %lld*%lld*%lld; change the rank count or the sizes",
                          (long long)world, (long long)expert_tp(), (long long)ep, (long long)pp));
  return e;
}

std::vector<std::vector<int>> rank_groups(const std::array<int64_t, kNumAxes>& sizes,
                                          const std::vector<GridAxis>& mask) {
  std::array<int64_t, kNumAxes> stride{};
  int64_t world = 1;
  for (int a = 0; a < kNumAxes; ++a) {
    stride[a] = world;
    world *= sizes[a];
  }
  std::vector<int> masked, unmasked;
  for (int a = 0; a < kNumAxes; ++a) {
    bool in = std::find(mask.begin(), mask.end(), static_cast<GridAxis>(a)) != mask.end();
    (in ? masked : unmasked).push_back(a);
  }
  int64_t group_size = 1;
  for (int a : masked) group_size *= sizes[a];
  std::vector<std::vector<int>> groups(static_cast<size_t>(world / group_size));
  for (size_t g = 0; g < groups.size(); ++g) {
    // Decode g over the unmasked axes (first fastest) and m over the masked axes.
    int64_t base = 0, rest = static_cast<int64_t>(g);
    for (int a : unmasked) {
      base += (rest % sizes[a]) * stride[a];
      rest /= sizes[a];
    }
    for (int64_t m = 0; m < group_size; ++m) {
      int64_t r = base, mrest = m;
      for (int a : masked) {
        r += (mrest % sizes[a]) * stride[a];
        mrest /= sizes[a];
      }
      groups[g].push_back(static_cast<int>(r));
    }
  }
  return groups;
}

namespace {

Communicator make_group(const Communicator& world, const std::array<int64_t, kNumAxes>& sizes,
                        const std::vector<GridAxis>& mask) {
  auto groups = rank_groups(sizes, mask);
  for (size_t g = 0; g < groups.size(); ++g)
    for (size_t m = 0; m < groups[g].size(); ++m)
      if (groups[g][m] == world.rank()) return world.split(static_cast<int>(g), static_cast<int>(m));
  FF_FAIL("rank %d is in no group (internal error in the grid)", world.rank());
}

}  // namespace

ParallelGrid::ParallelGrid(const Communicator& world, const ParallelConfig& cfg)
    : cfg_(cfg), world_size_(world.size()), world_rank_(world.rank()) {
  auto errors = cfg.validate(world.size());
  if (!errors.empty()) {
    const std::string all = join_problems(errors);
    FF_FAIL("invalid parallel layout:%s", all.c_str());
  }
  attn_sizes_ = {cfg.tp, cfg.cp, 1, world.size() / (cfg.tp * cfg.cp * cfg.pp), cfg.pp};
  expert_sizes_ = {cfg.expert_tp(), 1, cfg.ep, world.size() / (cfg.expert_tp() * cfg.ep * cfg.pp), cfg.pp};
  tp_ = make_group(world, attn_sizes_, {kTp});
  cp_ = make_group(world, attn_sizes_, {kCp});
  dp_ = make_group(world, attn_sizes_, {kDp});
  dp_cp_ = make_group(world, attn_sizes_, {kCp, kDp});
  pp_ = make_group(world, attn_sizes_, {kPp});
  tp_cp_ = make_group(world, attn_sizes_, {kTp, kCp});
  tp_dp_cp_ = make_group(world, attn_sizes_, {kTp, kCp, kDp});
  mp_ = make_group(world, attn_sizes_, {kTp, kPp});
  all_ = make_group(world, attn_sizes_, {kTp, kCp, kEp, kDp, kPp});
  ep_ = make_group(world, expert_sizes_, {kEp});
  etp_ = make_group(world, expert_sizes_, {kTp});
  edp_ = make_group(world, expert_sizes_, {kDp});
  etp_ep_ = make_group(world, expert_sizes_, {kTp, kEp});
  expert_mp_ = make_group(world, expert_sizes_, {kTp, kEp, kPp});
  if (!cfg.trace_collectives.empty()) {
    const std::string path = cfg.trace_collectives + ".rank" + std::to_string(world.rank()) + ".log";
    trace_.out = std::fopen(path.c_str(), "w");
    FF_CHECK(trace_.out, "parallel.trace_collectives: cannot write '%s'", path.c_str());
  }
  CollectiveTrace* t = &trace_;
  tp_.set_name("tp", t);
  cp_.set_name("cp", t);
  dp_.set_name("dp", t);
  dp_cp_.set_name("dp_cp", t);
  pp_.set_name("pp", t);
  tp_cp_.set_name("tp_cp", t);
  tp_dp_cp_.set_name("tp_dp_cp", t);
  mp_.set_name("mp", t);
  all_.set_name("all", t);
  ep_.set_name("ep", t);
  etp_.set_name("etp", t);
  edp_.set_name("edp", t);
  etp_ep_.set_name("etp_ep", t);
  expert_mp_.set_name("expert_mp", t);
  // The pipeline groups of both grids must coincide (§1.3): PP is the slowest axis of both.
  auto expert_pp = rank_groups(expert_sizes_, {kPp});
  FF_CHECK(expert_pp == rank_groups(attn_sizes_, {kPp}), "attention and expert pipeline groups differ");
}

ParallelGrid::~ParallelGrid() {
  if (trace_.out) std::fclose(trace_.out);
}

double ParallelGrid::communication_seconds() const {
  double s = 0;
  for (const Communicator* c : {&tp_, &cp_, &dp_, &dp_cp_, &pp_, &tp_cp_, &tp_dp_cp_, &mp_, &all_, &ep_, &etp_, &edp_,
                                &etp_ep_, &expert_mp_})
    s += c->seconds();
  return s;
}

std::string ParallelGrid::describe() const {
  return strprintf(
      "parallel layout: world %d = attention tp %lld x cp %lld x dp %lld x pp %lld; "
      "experts etp %lld x ep %lld x edp %lld x pp %lld%s\n"
      "  rank %d: tp %d/%d cp %d/%d dp %d/%d pp %d/%d | ep %d/%d etp %d/%d edp %d/%d",
      world_size_, (long long)attn_sizes_[kTp], (long long)attn_sizes_[kCp], (long long)attn_sizes_[kDp],
      (long long)attn_sizes_[kPp], (long long)expert_sizes_[kTp], (long long)expert_sizes_[kEp],
      (long long)expert_sizes_[kDp], (long long)expert_sizes_[kPp], cfg_.sequence_parallel ? " (sequence parallel)" : "",
      world_rank_, tp_.rank(), tp_.size(), cp_.rank(), cp_.size(), dp_.rank(), dp_.size(), pp_.rank(), pp_.size(),
      ep_.rank(), ep_.size(), etp_.rank(), etp_.size(), edp_.rank(), edp_.size());
}

}  // namespace ff
