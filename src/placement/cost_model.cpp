#include "placement/cost_model.h"

#include <cmath>
#include <vector>

namespace moelab::placement {
namespace {

constexpr double kBest[8] = {26.868, 96.183, 33.005, 36.073, 39.141, 42.209, 45.277, 48.345};
constexpr double kAvg[8] = {55.258, 66.713, 78.169, 89.624, 101.079, 112.535, 123.990, 135.445};
constexpr double kWorst[8] = {88.238, 96.183, 104.129, 112.074, 120.020, 127.965, 135.911, 143.856};

// Solves the n x n system a x = b (Gaussian elimination with partial pivoting).
std::vector<double> solve(std::vector<std::vector<double>> a, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t col = 0; col < n; ++col) {
    size_t pivot = col;
    for (size_t r = col + 1; r < n; ++r)
      if (std::fabs(a[r][col]) > std::fabs(a[pivot][col])) pivot = r;
    std::swap(a[col], a[pivot]);
    std::swap(b[col], b[pivot]);
    for (size_t r = col + 1; r < n; ++r) {
      double f = a[r][col] / a[col][col];
      for (size_t c = col; c < n; ++c) a[r][c] -= f * a[col][c];
      b[r] -= f * b[col];
    }
  }
  std::vector<double> x(n);
  for (size_t i = n; i-- > 0;) {
    double s = b[i];
    for (size_t c = i + 1; c < n; ++c) s -= a[i][c] * x[c];
    x[i] = s / a[i][i];
  }
  return x;
}

}  // namespace

Coefficients fit_dispatch_coefficients(int64_t rows) {
  const double avg_hop = rows > 1 ? (static_cast<double>(rows) - 1.0) / 2.0 : 0.0;
  const double worst_hop = rows > 1 ? static_cast<double>(rows) / 2.0 : 0.0;
  // Columns [1, E, h] (h = the common hop): full rank unless every hop is zero.
  const bool hops_vary = avg_hop != 0.0 || worst_hop != 0.0;
  const size_t n = hops_vary ? 3 : 2;
  std::vector<std::vector<double>> normal(n, std::vector<double>(n, 0.0));
  std::vector<double> rhs(n, 0.0);
  auto add_row = [&](double e, double h, double t) {
    const double x[3] = {1.0, e, h};
    for (size_t i = 0; i < n; ++i) {
      rhs[i] += x[i] * t;
      for (size_t j = 0; j < n; ++j) normal[i][j] += x[i] * x[j];
    }
  };
  for (int i = 0; i < 8; ++i) {
    const double e = i + 1;
    add_row(e, 0.0, kBest[i]);
    add_row(e, avg_hop, kAvg[i]);
    add_row(e, worst_hop, kWorst[i]);
  }
  std::vector<double> x = solve(normal, rhs);
  const double hop = hops_vary ? x[2] : 0.0;
  return {x[0], x[1], hop / 2.0, hop / 2.0};
}

}  // namespace moelab::placement
