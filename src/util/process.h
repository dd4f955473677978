#pragma once
// Starting helper processes (the BPE tool, sweep cells) with their output in a log file.
#include <sys/types.h>

#include <string>
#include <vector>

namespace moelab {

// Starts argv[0] with stdout and stderr appended to `log_path`, in this process's environment
// with `extra_env` ("NAME=value") set over it; returns the pid, or -1 if the program
// could not be started.
pid_t spawn_logged(const std::vector<std::string>& argv, const std::string& log_path,
                   const std::vector<std::string>& extra_env = {});

// Waits for `pid` (any child when pid = -1); returns the pid reaped and whether it exited 0.
std::pair<pid_t, bool> wait_for(pid_t pid);

}  // namespace moelab
