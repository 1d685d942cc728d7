// Entry point of the distributed tests, run under mpirun. Every rank runs every test; a failure on
// any rank makes that rank exit non-zero, which fails the mpirun. Only rank 0 prints gtest output.
#include <gtest/gtest.h>

#include "parallel/comm.h"

int main(int argc, char** argv) {
  ff::MpiSession mpi(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  if (ff::Communicator::world().rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int rc = RUN_ALL_TESTS();
  int all = rc;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return all;
}
