#pragma once
// One function per subcommand; each parses its own flags (argv[0] is the subcommand).
namespace moelab::cli {

int train_command(int argc, char** argv);
int eval_command(int argc, char** argv);
int generate_command(int argc, char** argv);
int sweep_command(int argc, char** argv);
int place_command(int argc, char** argv);
int coact_command(int argc, char** argv);
int trace_command(int argc, char** argv);
int plot_command(int argc, char** argv);
int bench_command(int argc, char** argv);
int export_command(int argc, char** argv);

}  // namespace moelab::cli
