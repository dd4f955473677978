#pragma once
// A fixed set of worker threads that run submitted tasks in submission order. Threads are
// started once: one thread per task costs a fresh stack (mapped, faulted in, and handed back
// with madvise when the thread ends) and a fresh allocator thread cache every time, which on
// the CPU trace took a tenth of the run.
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace moelab {

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads);
  ~ThreadPool();  // finishes the queued tasks, then joins
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // Runs fn() on a worker (on the caller, at once, in a pool of no threads); the future
  // holds its result or the exception it threw.
  template <typename F>
  std::future<std::invoke_result_t<F>> submit(F fn) {
    auto task = std::make_shared<std::packaged_task<std::invoke_result_t<F>()>>(std::move(fn));
    std::future<std::invoke_result_t<F>> result = task->get_future();
    if (workers_.empty()) {
      (*task)();
      return result;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.emplace_back([task] { (*task)(); });
    }
    ready_.notify_one();
    return result;
  }

  size_t size() const { return workers_.size(); }

 private:
  void run();
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace moelab
