// A rank that fails ends the whole job with its rank and reason instead of leaving the others
// waiting in a collective. Disabled in the ordinary runs (it aborts the job by design); CTest runs
// it alone (dist.abort) and checks the message and that the job ends within its timeout.
#include <gtest/gtest.h>

#include "core/check.h"
#include "parallel/comm.h"

namespace ff {
namespace {

TEST(DISABLED_Abort, OneFailingRankEndsTheJob) {
  Communicator w = Communicator::world();
  if (w.rank() == w.size() - 1) {
    try {
      FF_FAIL("deliberate failure on the last rank");
    } catch (const Error& e) {
      abort_job(e.what());  // what the fivefold binary's main does with any error
    }
  }
  w.barrier();  // the other ranks would wait here forever without the abort
}

}  // namespace
}  // namespace ff
