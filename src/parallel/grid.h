// ParallelGrid: the two rank grids of MoE Parallel Folding (specs/parallelism-and-moe.md §1).
// Attention/dense layers see the world as TP x CP x DP x PP, MoE layers as ETP x EP x EDP x PP,
// both decoded from the order "tp-cp-ep-dp-pp" (first axis fastest) by one mixed-radix routine.
// A single process is the grid with every size 1: the same code path, with groups of one rank.
#pragma once
#include <array>
#include <span>
#include <string>
#include <vector>

#include "core/fields.h"
#include "parallel/comm.h"

namespace ff {

// alltoall: one row per (token, expert) (§7.4); allgather (§7.3); alltoall_dedup: one row per
// (token, destination EP rank), expanded there (layers/moe/dedup_dispatcher.h).
enum class MoeDispatcher : uint8_t { alltoall, allgather, alltoall_dedup };
std::span<const EnumName<MoeDispatcher>> enum_names(MoeDispatcher);
enum class CpComm : uint8_t { ring, all_gather };
std::span<const EnumName<CpComm>> enum_names(CpComm);

struct ParallelConfig {
  int64_t tp = 1, cp = 1, pp = 1, ep = 1;
  int64_t etp = 0;  // expert tensor parallel; 0 = same as tp
  bool sequence_parallel = false;
  MoeDispatcher moe_dispatcher = MoeDispatcher::alltoall;
  std::string trace_collectives;  // debug: log every collective to PREFIX.rank<r>.log
  int64_t virtual_stages = 1;     // model chunks per pipeline stage (interleaved schedule when > 1)
  CpComm cp_comm = CpComm::ring;

  template <class V>
  void visit_fields(V& v) {
    v(tp, "tp", "tensor-parallel size");
    v(cp, "cp", "context-parallel size");
    v(pp, "pp", "pipeline-parallel size");
    v(ep, "ep", "expert-parallel size");
    v(etp, "etp", "expert-tensor-parallel size; 0 = same as tp");
    v(sequence_parallel, "sequence_parallel", "split norms/dropout activations along the sequence over TP");
    v(moe_dispatcher, "moe_dispatcher", "token dispatcher over the EP group: alltoall (one row per token and expert), "
                                        "allgather (every token to every EP rank), alltoall_dedup (one row per token "
                                        "and destination rank, expanded to its experts there)");
    v(cp_comm, "cp_comm", "context-parallel attention: ring (K/V blocks passed around) or all_gather (K/V gathered)");
    v(virtual_stages, "virtual_stages", "model chunks per pipeline stage; > 1 uses the interleaved schedule");
    v(trace_collectives, "trace_collectives", "debug: write every collective of rank r to PREFIX.rank<r>.log, "
      "to check that all ranks issue them in one order; empty = off");
  }
  int64_t expert_tp() const { return etp > 0 ? etp : tp; }
  // Every problem with these sizes for a world of `world` ranks; empty = valid.
  std::vector<std::string> validate(int64_t world) const;
};

// Axes of one rank grid, in the order "tp-cp-ep-dp-pp".
enum GridAxis { kTp = 0, kCp, kEp, kDp, kPp, kNumAxes };

// Pure mixed-radix rank arithmetic (§1.2): the groups obtained by varying the axes in `mask`
// while the others stay fixed. Groups partition the ranks; members are listed in increasing
// member index (the first masked axis fastest). Exposed for tests.
std::vector<std::vector<int>> rank_groups(const std::array<int64_t, kNumAxes>& sizes,
                                          const std::vector<GridAxis>& mask);

class ParallelGrid {
 public:
  // Collective over `world`: builds every group as a communicator.
  ParallelGrid(const Communicator& world, const ParallelConfig& cfg);
  ~ParallelGrid();
  ParallelGrid(const ParallelGrid&) = delete;
  ParallelGrid& operator=(const ParallelGrid&) = delete;

  const ParallelConfig& config() const { return cfg_; }
  int world_size() const { return world_size_; }
  int world_rank() const { return world_rank_; }
  int64_t dp_size() const { return attn_sizes_[kDp]; }
  int64_t edp_size() const { return expert_sizes_[kDp]; }

  // Attention grid.
  const Communicator& tp() const { return tp_; }
  const Communicator& cp() const { return cp_; }
  const Communicator& dp() const { return dp_; }
  const Communicator& dp_cp() const { return dp_cp_; }
  const Communicator& pp() const { return pp_; }
  const Communicator& tp_cp() const { return tp_cp_; }
  const Communicator& tp_dp_cp() const { return tp_dp_cp_; }
  const Communicator& mp() const { return mp_; }  // tp-pp: grad norm of dense params
  const Communicator& all() const { return all_; }  // every rank of the job
  // Expert grid.
  const Communicator& ep() const { return ep_; }
  const Communicator& etp() const { return etp_; }
  const Communicator& edp() const { return edp_; }
  const Communicator& etp_ep() const { return etp_ep_; }
  const Communicator& expert_mp() const { return expert_mp_; }  // etp-ep-pp: grad norm of expert params

  // A multi-line table of sizes and this rank's coordinates, printed at start-up.
  std::string describe() const;
  // Seconds this rank has spent in the grid's collectives since it was built.
  double communication_seconds() const;

 private:
  ParallelConfig cfg_;
  int world_size_ = 1, world_rank_ = 0;
  std::array<int64_t, kNumAxes> attn_sizes_{}, expert_sizes_{};
  Communicator tp_, cp_, dp_, dp_cp_, pp_, tp_cp_, tp_dp_cp_, mp_, all_;
  Communicator ep_, etp_, edp_, etp_ep_, expert_mp_;
  CollectiveTrace trace_;
};

}  // namespace ff
