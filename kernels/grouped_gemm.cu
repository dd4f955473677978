// The kernel of grouped_gemm.h; see there for what it computes and how it is laid out.
#include "kernels/grouped_gemm.h"

#include <cudaTypedefs.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>

#include "kernels/gelu.cuh"

namespace moelab::kernels::cuda {
namespace {

constexpr int kBlockM = 128, kBlockN = 256, kBlockK = 64;
constexpr int kConsumerWarps = 8;  // two warpgroups of 64 rows each
constexpr int kThreads = 128 + 32 * kConsumerWarps;
constexpr uint32_t kStageBytes = (kBlockM + kBlockN) * kBlockK * 2;
constexpr int kBoxElements = 64 * 64;  // a staged 64 x 64 box of results

// Shared memory, 227 KB at most. kGeluBackward reads each tile's slopes into `staged` while
// the mainloop runs, so it stages a warpgroup's whole 64 x 256 result (four boxes) and has
// room for three stages; the other epilogues stage 64 x 64 boxes in two buffers used in turn
// (a box is written while the one before it is stored) and get four stages (the mainloop
// alone: 670 TFLOP/s with three, 717 with four; with the epilogues, the forward and the weight
// gradients gain a little and the bias-only product nothing). 128-byte swizzled tiles start
// at 1024-byte boundaries, and so does the dynamic shared memory itself.
template <GroupedGemmEpilogue Epilogue>
struct alignas(1024) SharedStorage {
  static constexpr bool kWholeTile = Epilogue == GroupedGemmEpilogue::kGeluBackward;
  static constexpr int kStages = kWholeTile ? 3 : 4;
  __nv_bfloat16 a[kStages][kBlockM * kBlockK];  // rows of 64 k (128 bytes), TMA-swizzled
  __nv_bfloat16 b[kStages][kBlockK * kBlockN];  // transposed: 256 rows of 64 k; else four 64 k x 64 n boxes
  __nv_bfloat16 staged[2][kWholeTile ? 4 : 2][kBoxElements];  // each consumer warpgroup's, 128-byte
                                                              // swizzled like TMA's
  // kGeluBackward: each warp's bias-gradient partials; else each consumer warpgroup's copy
  // of the tile's bias.
  float scratch[kWholeTile ? kConsumerWarps : 2][kBlockN];
  uint64_t full[kStages], empty[kStages];
};
static_assert(sizeof(SharedStorage<GroupedGemmEpilogue::kBias>) <= 227 * 1024 &&
              sizeof(SharedStorage<GroupedGemmEpilogue::kGeluBackward>) <= 227 * 1024);

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void barrier_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(count));
}
__device__ __forceinline__ void barrier_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void barrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_address(bar)) : "memory");
}
// Returns once the barrier's phase of this parity has completed.
__device__ __forceinline__ void barrier_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(shared_address(bar)), "r"(parity)
        : "memory");
  }
}
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, int inner, int outer, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          shared_address(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(inner), "r"(outer), "r"(shared_address(bar))
      : "memory");
}
// A wgmma shared-memory descriptor of a 128-byte-swizzled tile: start address, the byte
// offset between 64-element chunks along M/N (used by MN-major B) and between 8-row groups.
__device__ __forceinline__ uint64_t smem_descriptor(const void* p, uint32_t chunk_stride, uint32_t group_stride) {
  return static_cast<uint64_t>((shared_address(p) & 0x3FFFF) >> 4) |
         static_cast<uint64_t>((chunk_stride & 0x3FFFF) >> 4) << 16 |
         static_cast<uint64_t>((group_stride & 0x3FFFF) >> 4) << 32 | 1ull << 62;
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// Keeps the compiler from moving accumulator reads or writes across the asynchronous wgmma.
__device__ __forceinline__ void fence_registers(float (&d)[128]) {
#pragma unroll
  for (int i = 0; i < 128; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// D (+)= A * B for one warpgroup: A 64 x 16 and B 16 x 256 bf16 in shared memory (descriptors),
// D 64 x 256 fp32 in the registers of the warpgroup's 128 threads (128 each). TransA/TransB = 1
// read the operand stored M/N-contiguous (MN-major), 0 K-contiguous. accumulate = 0 overwrites D.
template <int TransA, int TransB>
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
      "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
        "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
        "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
        "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
        "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
        "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
        "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
        "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
        "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "l"(desc_a), "l"(desc_b), "r"(accumulate), "n"(TransA), "n"(TransB));
}

__device__ __forceinline__ void warpgroup_sync(int half) {
  asm volatile("bar.sync %0, 128;" ::"r"(2 + half) : "memory");
}
__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(32 * kConsumerWarps) : "memory"); }
__device__ __forceinline__ void copy_async_16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }
// Byte offset of (row, col) in staged 64 x 64 boxes: box col / 64, 128 bytes a row, the
// 16-byte chunk index XORed with row % 8 (TMA's 128-byte swizzle). The 8 rows a warp's
// fragment touches at once then fall in different banks, and so do a row's 8 chunks.
__device__ __forceinline__ int staged_offset(int row, int col) {
  return (col / 64) * (kBoxElements * 2) + row * 128 + ((((col % 64) / 8) ^ (row % 8)) * 16) + (col % 8) * 2;
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* staged, int row, int col, float v0, float v1) {
  *reinterpret_cast<__nv_bfloat162*>(reinterpret_cast<char*>(staged) + staged_offset(row, col)) = __floats2bfloat162_rn(v0, v1);
}
__device__ __forceinline__ float2 load_pair(const __nv_bfloat16* staged, int row, int col) {
  return __bfloat1622float2(
      *reinterpret_cast<const __nv_bfloat162*>(reinterpret_cast<const char*>(staged) + staged_offset(row, col)));
}
// Rows [0, live_rows) of `boxes` staged 64 x 64 boxes and dst's rows from first_row, column
// col on: 16 bytes a thread, 8 threads a box row. ToShared reads dst into staged (cp.async).
template <bool ToShared>
__device__ __forceinline__ void copy_rows(__nv_bfloat16* staged, int boxes, __nv_bfloat16* dst, int64_t first_row, int live_rows,
                                          int n, int col, int thread) {
  const int chunks = 8 * boxes;  // 16-byte chunks per row
  for (int i = thread; i < live_rows * chunks; i += 128) {
    const int r = i / chunks, c = 8 * (i % chunks);
    char* shared = reinterpret_cast<char*>(staged) + staged_offset(r, c);
    __nv_bfloat16* global = dst + (first_row + r) * n + col + c;
    if (ToShared) copy_async_16(shared, global);
    else *reinterpret_cast<uint4*>(global) = *reinterpret_cast<const uint4*>(shared);
  }
}
// TMA stores of `boxes` staged 64 x 64 boxes as one bulk group, issued by one thread after
// every thread's fence_async_shared and a warpgroup_sync.
__device__ __forceinline__ void fence_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
__device__ __forceinline__ void tma_store_boxes(const CUtensorMap* map, const __nv_bfloat16* staged, int boxes, int64_t first_row,
                                                int col) {
  for (int box = 0; box < boxes; ++box)
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::"l"(
                     reinterpret_cast<uint64_t>(map)),
                 "r"(col + 64 * box), "r"(static_cast<int>(first_row)), "r"(shared_address(staged + box * kBoxElements))
                 : "memory");
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
}
// Returns once at most Pending of this thread's bulk store groups still read shared memory.
template <int Pending>
__device__ __forceinline__ void store_wait_read() { asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(Pending) : "memory"); }

// One step of a reduction over lanes by halving: of the first Offset sums, a lane with bit
// Offset set keeps the upper half and its partner (bit clear) the lower, each adding the
// partner's copy of the half it keeps; the result, over both lanes, is in sums[0, Offset / 2).
template <int Offset>
__device__ __forceinline__ void keep_half(float (&sums)[16], int lane) {
  constexpr int kCount = Offset / 2;
  const bool upper = lane & Offset;
#pragma unroll
  for (int i = 0; i < kCount; ++i) {
    const float low = sums[i], high = sums[kCount + i];
    sums[i] = (upper ? high : low) + __shfl_xor_sync(0xffffffffu, upper ? low : high, Offset);
  }
}

struct Tile {
  int expert;
  int64_t row, row_end;  // the tile's first output row and its expert's end
  int col;
  int k_blocks;          // 64-wide steps of the reduction
  // Weight gradients: the reduction runs over the expert's rows from k_row, the last step
  // holding k_tail of them; A's columns (the output's rows within the expert) start at a_col.
  // clear_b: the last step runs into the padding rows after the last expert (from the last
  // expert or from one before a few small ones), which may hold NaN in B as well (elsewhere
  // the rows past an expert's are the next experts', finite).
  int64_t k_row = 0;
  int k_tail = kBlockK, a_col = 0;
  bool clear_b = false;
};

// The tiles of the grouped product in order expert, column tile, row tile: each thread that
// schedules walks the experts forward as its tile index t grows (a CTA's tiles only grow).
struct TileWalk {
  const int* ends;
  int experts, k, col_tiles;
  int expert = 0, expert_first_tile = 0;  // the expert of the last tile asked for, and its first tile
  __device__ __forceinline__ int begin(int e) const { return e == 0 ? 0 : ends[e - 1]; }
  __device__ __forceinline__ int row_tiles(int e) const { return (ends[e] - begin(e) + kBlockM - 1) / kBlockM; }
  // Tile t, or false once t is past the last expert's tiles.
  __device__ __forceinline__ bool at(int t, Tile& tile) {
    while (expert < experts && t >= expert_first_tile + row_tiles(expert) * col_tiles) {
      expert_first_tile += row_tiles(expert) * col_tiles;
      ++expert;
    }
    if (expert == experts) return false;
    const int local = t - expert_first_tile, rows = row_tiles(expert);
    tile = {expert, begin(expert) + static_cast<int64_t>(local % rows) * kBlockM, ends[expert], (local / rows) * kBlockN,
            k / kBlockK};
    return true;
  }
};

// Weight gradients: every expert has (m / 128) x (n / 256) output tiles, whatever its rows.
__device__ __forceinline__ Tile weight_grad_tile_at(const int* ends, int experts, int m, int n, int t) {
  const int row_tiles = m / kBlockM, per_expert = row_tiles * (n / kBlockN);
  const int e = t / per_expert, local = t % per_expert;
  const int begin = e == 0 ? 0 : ends[e - 1], rows = ends[e] - begin;
  Tile tile;
  tile.expert = e;
  tile.a_col = (local % row_tiles) * kBlockM;
  tile.row = static_cast<int64_t>(e) * m + tile.a_col;
  tile.row_end = tile.row + kBlockM;
  tile.col = (local / row_tiles) * kBlockN;
  tile.k_blocks = (rows + kBlockK - 1) / kBlockK;
  tile.k_row = begin;
  tile.k_tail = rows - (tile.k_blocks - 1) * kBlockK;
  tile.clear_b = begin + static_cast<int64_t>(tile.k_blocks) * kBlockK > ends[experts - 1];
  return tile;
}

template <GroupedGemmEpilogue Epilogue, bool TransposedB, bool WeightGrad>
__global__ void __launch_bounds__(kThreads, 1)
    grouped_gemm_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                        const __grid_constant__ CUtensorMap out_map, const __grid_constant__ CUtensorMap slope_map,
                        const GroupedGemmArgs args) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Storage = SharedStorage<Epilogue>;
  constexpr int kStages = Storage::kStages;
  extern __shared__ __align__(1024) unsigned char shared_raw[];
  if (shared_address(shared_raw) % 1024 != 0) __trap();  // the swizzled tiles would be misread
  Storage& s = *reinterpret_cast<Storage*>(shared_raw);
  const int experts = args.experts, n = args.n;
  const int col_tiles = n / kBlockN;

  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      barrier_init(&s.full[i], 1);
      barrier_init(&s.empty[i], kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  // This CTA's tiles, t = blockIdx.x, blockIdx.x + gridDim.x, ...: false once past the last.
  TileWalk walk{args.ends, experts, args.k, col_tiles};
  const int weight_grad_tiles = experts * (args.m / kBlockM) * col_tiles;
  auto tile_of = [&](int t, Tile& tile) {
    if (!WeightGrad) return walk.at(t, tile);
    if (t >= weight_grad_tiles) return false;
    tile = weight_grad_tile_at(args.ends, experts, args.m, n, t);
    return true;
  };
  const int warpgroup = threadIdx.x / 128;

  if (warpgroup == 0) {
    // Producer: one thread issues every load; the others give their registers to the consumers.
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (threadIdx.x != 0) return;
    int stage = 0;
    uint32_t phase = 0;
    Tile tile;
    for (int t = blockIdx.x; tile_of(t, tile); t += gridDim.x) {
      for (int kb = 0; kb < tile.k_blocks; ++kb) {
        barrier_wait(&s.empty[stage], phase ^ 1);  // a fresh barrier counts as released
        barrier_expect_bytes(&s.full[stage], kStageBytes);
        if (WeightGrad) {
          // A^T's 128 columns as two 64 x 64 boxes (one per consumer warpgroup), B's rows as ever.
          const int k_row = static_cast<int>(tile.k_row) + kb * kBlockK;
          for (int box = 0; box < 2; ++box)
            tma_load(s.a[stage] + box * 64 * kBlockK, &a_map, tile.a_col + box * 64, k_row, &s.full[stage]);
          for (int chunk = 0; chunk < kBlockN / 64; ++chunk)
            tma_load(s.b[stage] + chunk * 64 * kBlockK, &b_map, tile.col + chunk * 64, k_row, &s.full[stage]);
        } else {
          tma_load(s.a[stage], &a_map, kb * kBlockK, static_cast<int>(tile.row), &s.full[stage]);
          if (TransposedB) {
            tma_load(s.b[stage], &b_map, kb * kBlockK, tile.expert * n + tile.col, &s.full[stage]);
          } else {
            for (int chunk = 0; chunk < kBlockN / 64; ++chunk)
              tma_load(s.b[stage] + chunk * 64 * kBlockK, &b_map, tile.col + chunk * 64,
                       tile.expert * args.k + kb * kBlockK, &s.full[stage]);
          }
        }
        if (++stage == kStages) stage = 0, phase ^= 1;
      }
    }
    return;
  }

  // Consumers: warpgroup 1 takes the tile's rows 0-63, warpgroup 2 rows 64-127.
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  const int half = warpgroup - 1;
  const int thread = threadIdx.x % 128, warp = thread / 32, lane = threadIdx.x % 32;
  const bool leader = thread == 0;
  int stage = 0;
  uint32_t phase = 0;
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
  Tile tile;
  for (int t = blockIdx.x; tile_of(t, tile); t += gridDim.x) {
    const int64_t first_row = tile.row + half * 64;
    const int live_rows = static_cast<int>(tile.row_end - first_row < 64 ? (tile.row_end > first_row ? tile.row_end - first_row : 0) : 64);
    const int64_t expert_col = static_cast<int64_t>(tile.expert) * n + tile.col;
    const bool has_bias = Epilogue == GroupedGemmEpilogue::kBiasGelu || (Epilogue == GroupedGemmEpilogue::kBias && args.bias);
    if (has_bias) {
      // The tile's bias row into shared memory while the mainloop runs: read from there, the
      // epilogue does not wait on global loads between its arithmetic.
      if (thread < kBlockN / 4) copy_async_16(&s.scratch[half][4 * thread], args.bias + expert_col + 4 * thread);
      copy_async_commit();
    }
    if constexpr (Storage::kWholeTile) {
      // Start reading the tile's GELU slopes now, once the last tile's stores have read
      // `staged`; they are needed after the mainloop.
      if (leader) store_wait_read<0>();
      warpgroup_sync(half);
      copy_rows<true>(s.staged[half][0], 4, args.gelu_slope, first_row, live_rows, n, tile.col, thread);
      copy_async_commit();
    }

    if (WeightGrad && tile.k_blocks == 0) {  // an expert without rows: a zero gradient
#pragma unroll
      for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
    }
    for (int kb = 0; kb < tile.k_blocks; ++kb) {
      barrier_wait(&s.full[stage], phase);
      if (WeightGrad && kb == tile.k_blocks - 1 && tile.k_tail < kBlockK) {
        // The last step's rows past the expert's belong to the next expert: zero them in this
        // warpgroup's A box (whole 128-byte rows, so the swizzle does not matter). Past the
        // last expert they are padding, possibly NaN in B too (0 * NaN is NaN): B is shared,
        // so both warpgroups clear it and wait for each other.
        const int cut = kBlockK - tile.k_tail;
        char* a_box = reinterpret_cast<char*>(s.a[stage] + half * 64 * kBlockK) + tile.k_tail * 128;
        for (int i = thread; i < cut * 8; i += 128) *reinterpret_cast<uint4*>(a_box + i * 16) = make_uint4(0, 0, 0, 0);
        if (tile.clear_b) {
          for (int i = threadIdx.x - 128; i < 4 * cut * 8; i += 32 * kConsumerWarps) {
            char* b_box = reinterpret_cast<char*>(s.b[stage] + (i / (cut * 8)) * 64 * kBlockK) + tile.k_tail * 128;
            *reinterpret_cast<uint4*>(b_box + (i % (cut * 8)) * 16) = make_uint4(0, 0, 0, 0);
          }
        }
        fence_async_shared();
        if (tile.clear_b) consumers_sync();
        else warpgroup_sync(half);
      }
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockK / 16; ++kk) {
        // A: 64 rows of 128 bytes from row 64*half, a k-step of 16 being 32 bytes inside the
        // swizzle; for weight gradients (A^T, M-contiguous) 16 of the box's 128-byte rows.
        const uint64_t a_desc = WeightGrad ? smem_descriptor(s.a[stage] + half * 64 * kBlockK + kk * 16 * 64, 64 * kBlockK * 2, 1024)
                                           : smem_descriptor(s.a[stage] + half * 64 * kBlockK + kk * 16, 16, 1024);
        const uint64_t b_desc = TransposedB ? smem_descriptor(s.b[stage] + kk * 16, 16, 1024)
                                            : smem_descriptor(s.b[stage] + kk * 16 * 64, 64 * kBlockK * 2, 1024);
        wgmma_m64n256k16<WeightGrad ? 1 : 0, TransposedB ? 0 : 1>(acc, a_desc, b_desc, kb > 0 || kk > 0);
      }
      wgmma_commit();
      if (Epilogue == GroupedGemmEpilogue::kGeluBackward && args.a_column_sums && tile.col == 0) {
        // While the tensor cores run: the column sums of this k-step's A over the tile's rows
        // of its expert (b2's gradient, A being dy). Warp w takes columns 8w..8w+7, lane l
        // column 8w + l%8 on rows l/8, l/8 + 4, ...; the four row groups meet by shuffles.
        const int consumer_warp = half * 4 + warp, c = 8 * consumer_warp + lane % 8;
        const int tile_rows = static_cast<int>(tile.row_end - tile.row < kBlockM ? tile.row_end - tile.row : kBlockM);
        const char* a_tile = reinterpret_cast<const char*>(s.a[stage]);
        float sum = 0.0f;
        for (int row = lane / 8; row < tile_rows; row += 4)
          sum += __bfloat162float(*reinterpret_cast<const __nv_bfloat16*>(a_tile + row * 128 + (((c / 8) ^ (row % 8)) * 16) + (c % 8) * 2));
        sum += __shfl_xor_sync(0xffffffffu, sum, 8);
        sum += __shfl_xor_sync(0xffffffffu, sum, 16);
        if (lane < 8) atomicAdd(args.a_column_sums + static_cast<int64_t>(tile.expert) * args.k + kb * kBlockK + c, sum);
      }
      wgmma_wait_all();
      fence_registers(acc);
      if (lane == 0) barrier_arrive(&s.empty[stage]);
      if (++stage == kStages) stage = 0, phase ^= 1;
    }

    // Epilogue, through `staged` so that global memory sees whole rows. Thread (warp, lane)
    // holds rows r and r + 8 (r = 16*warp + lane/4) of the warpgroup's 64, and columns
    // 8j + 2*(lane%4) + {0, 1} for j < 32: acc[4j + {0,1}] on row r, acc[4j + {2,3}] on r + 8.
    const int r = warp * 16 + lane / 4;
    // Staged boxes to dst: whole 64-row boxes by TMA, which drain while the warpgroup goes on;
    // partial ones (an expert's last rows) by plain stores, so that no row of the next expert
    // is touched.
    auto store_staged = [&](const CUtensorMap* map, __nv_bfloat16* dst, __nv_bfloat16* staged, int boxes, int col) {
      fence_async_shared();
      warpgroup_sync(half);
      if (live_rows == 64) {
        if (leader) tma_store_boxes(map, staged, boxes, first_row, tile.col + col);
      } else {
        copy_rows<false>(staged, boxes, dst, first_row, live_rows, n, tile.col + col, thread);
      }
    };
    if constexpr (Storage::kWholeTile) {
      // kGeluBackward: out = acc * slope in place over the slopes, and b1's gradient.
      copy_async_wait_all();
      warpgroup_sync(half);
      __nv_bfloat16* staged = s.staged[half][0];
#pragma unroll
      for (int box = 0; box < 4; ++box) {  // each box stored as soon as it is done
        float sums[16] = {};  // the box's columns 8jj + 2*(lane%4) + c at [2jj + c], this thread's rows
#pragma unroll
        for (int jj = 0; jj < 8; ++jj) {
          const int j = 8 * box + jj, col = 8 * j + 2 * (lane % 4);
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (r + 8 * h >= live_rows) continue;
            const float2 slope = load_pair(staged, r + 8 * h, col);
            const float g0 = acc[4 * j + 2 * h] * slope.x, g1 = acc[4 * j + 2 * h + 1] * slope.y;
            store_pair(staged, r + 8 * h, col, g0, g1);
            sums[2 * jj] += g0;
            sums[2 * jj + 1] += g1;
          }
        }
        // Over the warp's 16 rows (the 8 lanes with the same lane % 4) by halving: each lane
        // keeps half of its sums and adds its partner's other half, three times, ending with
        // the sums of jj = lane / 4: 14 shuffles for 16 columns where a butterfly takes 48.
        keep_half<16>(sums, lane);
        keep_half<8>(sums, lane);
        keep_half<4>(sums, lane);
        const int col = 8 * (8 * box + lane / 4) + 2 * (lane % 4);
        s.scratch[half * 4 + warp][col] = sums[0];
        s.scratch[half * 4 + warp][col + 1] = sums[1];
        store_staged(&out_map, args.out, staged + box * kBoxElements, 1, 64 * box);
      }
      // Both warpgroups' partials meet here: one atomic per column per tile.
      consumers_sync();
      const int column = threadIdx.x - 128;
      float sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kConsumerWarps; ++w) sum += s.scratch[w][column];
      atomicAdd(args.bias_grad + expert_col + column, sum);
      consumers_sync();  // the partials are free again
    } else {
      if (has_bias) {
        copy_async_wait_all();
        warpgroup_sync(half);
      }
      // A 64-column box at a time into the two buffers in turn: before writing one, the
      // store that last read it (the one before the latest) must be done reading.
      int next_buffer = 0;
      auto stage_box = [&](const CUtensorMap* map, __nv_bfloat16* dst, int box, auto value_of) {
        __nv_bfloat16* staged = s.staged[half][next_buffer];
        next_buffer ^= 1;
        if (leader) {
          if (live_rows == 64) store_wait_read<1>();
          else store_wait_read<0>();  // partial boxes' plain stores leave no bulk group to count
        }
        warpgroup_sync(half);
#pragma unroll
        for (int j = 8 * box; j < 8 * box + 8; ++j) {
          const int col = 8 * (j % 8) + 2 * (lane % 4);
          const float4 v = value_of(j);
          store_pair(staged, r, col, v.x, v.y);
          store_pair(staged, r + 8, col, v.z, v.w);
        }
        store_staged(map, dst, staged, 1, 64 * box);
      };
#pragma unroll
      for (int box = 0; box < 4; ++box) {
        if constexpr (Epilogue == GroupedGemmEpilogue::kBias) {
          stage_box(&out_map, args.out, box, [&](int j) {
            const float2 bias = has_bias ? *reinterpret_cast<const float2*>(&s.scratch[half][8 * j + 2 * (lane % 4)]) : make_float2(0.0f, 0.0f);
            return make_float4(acc[4 * j] + bias.x, acc[4 * j + 1] + bias.y, acc[4 * j + 2] + bias.x, acc[4 * j + 3] + bias.y);
          });
        } else {
          // kBiasGelu: the GELU replaces the accumulators; its slope, which the backward needs,
          // goes out first (computed here from the same erf, it saves the backward a second one).
          stage_box(&slope_map, args.gelu_slope, box, [&](int j) {
            const float2 bias = *reinterpret_cast<const float2*>(&s.scratch[half][8 * j + 2 * (lane % 4)]);
            float slope[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[4 * j + q] = gelu_and_slope(acc[4 * j + q] + (q % 2 ? bias.y : bias.x), slope[q]);
            return make_float4(slope[0], slope[1], slope[2], slope[3]);
          });
          stage_box(&out_map, args.out, box,
                    [&](int j) { return make_float4(acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]); });
        }
      }
    }
  }
  if (leader) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");  // staged must outlive the stores
#else
  __trap();  // built without sm_90a: grouped_gemm_supported() keeps other devices away
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess)
      throw std::runtime_error("grouped_gemm: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// A row-major bf16 matrix [outer, inner] moved in boxes of box_outer x 64 (128-byte swizzle).
CUtensorMap tensor_map(const __nv_bfloat16* data, int64_t outer, int64_t inner, int box_outer) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(outer)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(inner) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_outer)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult status = tensor_map_encoder()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<__nv_bfloat16*>(data), dims, strides, box, element_strides,
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (status != CUDA_SUCCESS) throw std::runtime_error("grouped_gemm: cuTensorMapEncodeTiled failed (" + std::to_string(status) + ")");
  return map;
}

template <GroupedGemmEpilogue Epilogue, bool TransposedB, bool WeightGrad = false>
void launch(const GroupedGemmArgs& args, cudaStream_t stream) {
  static int sms = 0;
  static std::once_flag configured;
  std::call_once(configured, [] {
    int device = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    cudaFuncSetAttribute(grouped_gemm_kernel<Epilogue, TransposedB, WeightGrad>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         sizeof(SharedStorage<Epilogue>));
  });
  const int64_t out_rows = WeightGrad ? static_cast<int64_t>(args.experts) * args.m : args.rows;
  const CUtensorMap a_map = WeightGrad ? tensor_map(args.a, args.rows, args.m, 64) : tensor_map(args.a, args.rows, args.k, kBlockM);
  const CUtensorMap b_map = WeightGrad    ? tensor_map(args.b, args.rows, args.n, kBlockK)
                            : TransposedB ? tensor_map(args.b, static_cast<int64_t>(args.experts) * args.n, args.k, kBlockN)
                                          : tensor_map(args.b, static_cast<int64_t>(args.experts) * args.k, args.n, kBlockK);
  // The results, stored in 64 x 64 boxes (the slope is only stored by kBiasGelu).
  const CUtensorMap out_map = tensor_map(args.out, out_rows, args.n, 64);
  const CUtensorMap slope_map = tensor_map(args.gelu_slope ? args.gelu_slope : args.out, out_rows, args.n, 64);
  grouped_gemm_kernel<Epilogue, TransposedB, WeightGrad>
      <<<sms, kThreads, sizeof(SharedStorage<Epilogue>), stream>>>(a_map, b_map, out_map, slope_map, args);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) throw std::runtime_error(std::string("grouped_gemm: launch failed: ") + cudaGetErrorString(status));
}

}  // namespace

bool grouped_gemm_weight_grad_supported(int64_t m, int64_t n, int experts, int device) {
  return grouped_gemm_supported(kBlockK, n, experts, device) && m > 0 && m % kBlockM == 0 &&
         static_cast<int64_t>(experts) * m < (int64_t{1} << 31);
}

void grouped_gemm_weight_grad(const GroupedGemmArgs& args, cudaStream_t stream) {
  if (args.rows == 0) {  // no rows at all (an expert-parallel rank sent nothing): zero gradients
    const cudaError_t status = cudaMemsetAsync(args.out, 0, sizeof(__nv_bfloat16) * args.experts * args.m * args.n, stream);
    if (status != cudaSuccess) throw std::runtime_error(std::string("grouped_gemm_weight_grad: ") + cudaGetErrorString(status));
    return;
  }
  launch<GroupedGemmEpilogue::kBias, false, true>(args, stream);
}

bool grouped_gemm_supported(int64_t k, int64_t n, int experts, int device) {
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0 && k > 0 && k % kBlockK == 0 && n > 0 && n % kBlockN == 0 && experts > 0 &&
         static_cast<int64_t>(experts) * std::max(k, n) < (int64_t{1} << 31);
}

void grouped_gemm(const GroupedGemmArgs& args, GroupedGemmEpilogue epilogue, cudaStream_t stream) {
  if (args.rows == 0) return;
  if (epilogue == GroupedGemmEpilogue::kBiasGelu) {
    if (args.b_transposed) launch<GroupedGemmEpilogue::kBiasGelu, true>(args, stream);
    else launch<GroupedGemmEpilogue::kBiasGelu, false>(args, stream);
  } else if (epilogue == GroupedGemmEpilogue::kBias) {
    if (args.b_transposed) launch<GroupedGemmEpilogue::kBias, true>(args, stream);
    else launch<GroupedGemmEpilogue::kBias, false>(args, stream);
  } else {
    if (args.b_transposed) launch<GroupedGemmEpilogue::kGeluBackward, true>(args, stream);
    else launch<GroupedGemmEpilogue::kGeluBackward, false>(args, stream);
  }
}

}  // namespace moelab::kernels::cuda
