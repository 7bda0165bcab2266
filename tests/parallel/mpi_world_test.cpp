// Each rank checks the world it sees under mpiexec: size as launched, distinct ranks, working
// collectives, and the shared-memory split that Topology will use to find nodes.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <numeric>
#include <vector>

namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

TEST(MpiWorld, SizeMatchesLaunch) {
  const char* launched = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (launched == nullptr) GTEST_SKIP() << "not launched by Open MPI's mpiexec";
  EXPECT_EQ(world_size(), std::atoi(launched));
}

TEST(MpiWorld, RanksAreDistinctAndDense) {
  const int n = world_size();
  const int me = world_rank();
  std::vector<int> all(n, -1);
  ASSERT_EQ(MPI_Allgather(&me, 1, MPI_INT, all.data(), 1, MPI_INT, MPI_COMM_WORLD), MPI_SUCCESS);
  std::vector<int> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(all, expected);
}

TEST(MpiWorld, AllreduceSumsRanks) {
  const int n = world_size();
  long long mine = world_rank() + 1, total = 0;
  ASSERT_EQ(MPI_Allreduce(&mine, &total, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD), MPI_SUCCESS);
  EXPECT_EQ(total, static_cast<long long>(n) * (n + 1) / 2);
}

TEST(MpiWorld, AlltoallvDeliversEachPairItsOwnPayload) {
  const int n = world_size(), me = world_rank();
  // Rank r sends (r + 1) values to every peer p, each encoding (r, p, i).
  std::vector<int> send_counts(n, me + 1), send_displs(n), recv_counts(n), recv_displs(n);
  for (int p = 0; p < n; ++p) {
    send_displs[p] = p * (me + 1);
    recv_counts[p] = p + 1;
    recv_displs[p] = p == 0 ? 0 : recv_displs[p - 1] + recv_counts[p - 1];
  }
  std::vector<int> send(n * (me + 1));
  for (int p = 0; p < n; ++p)
    for (int i = 0; i <= me; ++i) send[send_displs[p] + i] = me * 10000 + p * 100 + i;
  std::vector<int> recv(recv_displs[n - 1] + recv_counts[n - 1], -1);
  ASSERT_EQ(MPI_Alltoallv(send.data(), send_counts.data(), send_displs.data(), MPI_INT, recv.data(),
                          recv_counts.data(), recv_displs.data(), MPI_INT, MPI_COMM_WORLD),
            MPI_SUCCESS);
  for (int p = 0; p < n; ++p)
    for (int i = 0; i <= p; ++i) EXPECT_EQ(recv[recv_displs[p] + i], p * 10000 + me * 100 + i);
}

TEST(MpiWorld, SharedMemorySplitSeesOneHost) {
  MPI_Comm node = MPI_COMM_NULL;
  ASSERT_EQ(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank(), MPI_INFO_NULL, &node),
            MPI_SUCCESS);
  int local_size = 0, local_rank = -1;
  MPI_Comm_size(node, &local_size);
  MPI_Comm_rank(node, &local_rank);
  EXPECT_EQ(local_size, world_size()) << "tests launch every rank on this one host";
  EXPECT_EQ(local_rank, world_rank());
  MPI_Comm_free(&node);
}

}  // namespace
