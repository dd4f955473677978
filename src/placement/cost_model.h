#pragma once
// The seed simulator's calibrated cost model (µs). For one batch:
//   hop(token, instance) = ring distance min(|r - r0|, rows - |r - r0|) from the token's origin row
//   T_dispatch(token) = A + B * E_col + C * avg_hop + D * max_hop, E_col = most of the token's
//                       instances in one column
//   T_combine(token)  = A + B * U + C * avg_hop + D * max_hop, U = distinct devices it reaches
//   compute(device)   = sum over its instances of 118 * ceil(tokens / 32)
//   latency = max_token T_dispatch + max_device compute + max_token T_combine
// (A, B, C, D) is the minimum-norm least-squares fit of the measured table.
#include <array>
#include <cstdint>

namespace moelab::placement {

using Coefficients = std::array<double, 4>;  // A, B, C, D

// Fit to the table with rows E = 1..8 at hop (0, 0), ((rows-1)/2, same), (rows/2, same).
// avg_hop and max_hop are equal in every row, so C and D are not separately determined;
// the minimum-norm solution (numpy.linalg.lstsq's) splits their sum evenly.
Coefficients fit_dispatch_coefficients(int64_t rows);

inline double token_time(const Coefficients& c, double spread, double avg_hop, double max_hop) {
  return c[0] + c[1] * spread + c[2] * avg_hop + c[3] * max_hop;
}

inline double instance_compute_us(int64_t tokens) {
  return tokens <= 0 ? 0.0 : 118.0 * static_cast<double>((tokens + 31) / 32);
}

}  // namespace moelab::placement
