#pragma once
// Errors a user can fix (bad config, corpus, checkpoint, trace, flag): main() prints the
// message on one line and exits with status 2. Everything else is a bug and exits 1.
#include <stdexcept>
#include <string>

namespace moelab {

class UserError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace moelab
