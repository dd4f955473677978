#pragma once
// CPython's `random.Random`, bit for bit: the Mersenne Twister MT19937 seeded as
// `random.seed(n)` seeds it for a non-negative integer n (init_by_array over n's 32-bit
// words), with `random()`, `getrandbits(k)`, `randrange(n)` (CPython's `_randbelow`:
// getrandbits(n.bit_length()) until below n), `uniform(a, b)` and `sample(range(n), k)`
// (CPython 3.11's algorithm: a shrinking pool when n is small against k, else rejection of
// repeats). moe-balance draws its synthetic traces and its `fast_test_pct` token samples with
// these, so moelab reproduces them exactly. Not thread-safe; not cryptographic.
#include <array>
#include <cstdint>
#include <vector>

namespace moelab {

class PythonRandom {
 public:
  explicit PythonRandom(uint64_t seed);

  uint32_t next_u32();                 // genrand_uint32
  double random();                     // [0, 1) from 53 bits, as CPython
  uint64_t getrandbits(int k);         // 0 <= k <= 64
  int64_t randrange(int64_t n);        // [0, n), n >= 1
  double uniform(double a, double b);  // a + (b - a) * random()
  std::vector<int64_t> sample(int64_t n, int64_t k);  // sample(range(n), k), in draw order

 private:
  static constexpr int kN = 624;
  std::array<uint32_t, kN> state_;
  int index_ = kN;
};

}  // namespace moelab
