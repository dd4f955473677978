#pragma once
// The training step captured once as a CUDA graph and replayed: forward, backward and the
// optimizer step become one launch instead of hundreds of kernel launches from the host,
// which is what bounds a small model's step. A capture runs nothing; every tensor the body
// touches keeps its address across replays, so the body must read its inputs from, and
// leave its results in, tensors that outlive the graph. Builds without CUDA libtorch 2.x
// report available() false.
#include <functional>
#include <memory>

namespace moelab {

class CudaGraph {
 public:
  static bool available();
  CudaGraph();
  ~CudaGraph();
  // Records `body` on the current stream, which must not be the default stream (see
  // CudaSideStream). The autocast weight cache is off during the capture: a cached cast
  // would be freed while the graph still reads it.
  void capture(const std::function<void()>& body);
  void replay();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A stream from libtorch's pool made current on `device_index` for the object's life (graph
// capture needs a stream other than the default one); the device is synchronised on entry
// and on exit, so work on either side of it stays ordered.
class CudaSideStream {
 public:
  explicit CudaSideStream(int device_index);
  ~CudaSideStream();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moelab
