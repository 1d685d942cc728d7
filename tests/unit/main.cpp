// Test entry point: MPI is initialised once for the whole binary (a single-process world), so
// tests build ParallelGrids and communicators exactly as the program does.
#include <gtest/gtest.h>

#include "parallel/comm.h"

int main(int argc, char** argv) {
  ff::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
