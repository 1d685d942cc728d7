// Ranks started with different configs are found before anything collective depends on them:
// every rank fails with the same message, naming the first field that differs and its values.
#include <gtest/gtest.h>

#include "train/config.h"

namespace ff {
namespace {

TEST(ConfigCheck, SameConfigPasses) {
  RunConfig c;
  Communicator world = Communicator::world();
  EXPECT_NO_THROW(check_same_config_on_every_rank(c, world));
}

TEST(ConfigCheck, AnotherConfigOnTheLastRankIsNamed) {
  Communicator world = Communicator::world();
  RunConfig c;
  if (world.rank() == world.size() - 1) c.optim.lr = 0.5;
  try {
    check_same_config_on_every_rank(c, world);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string want = strprintf("rank %d of this job resolved another config than rank 0: optim.lr = 0.5, "
                                       "rank 0 has 0.003", world.size() - 1);
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ff
