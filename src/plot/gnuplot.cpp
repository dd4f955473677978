#include "plot/gnuplot.h"

#include <cstdio>
#include <cstdlib>

#include "util/files.h"
#include "util/log.h"
#include "util/strings.h"

namespace moelab::plot {
namespace {

std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

bool run_script(const std::string& png, const std::string& script, const std::string& data, int width = 1000,
                int height = 650) {
  if (!gnuplot_available()) {
    log::warn("gnuplot is not installed (apt-get install gnuplot-nox): " + png + " not drawn");
    return false;
  }
  std::string data_path = temp_path_beside(png + ".dat"), script_path = temp_path_beside(png + ".gp");
  write_file_atomic(data_path, data);
  std::string full = strf("set terminal pngcairo size %d,%d noenhanced font 'Sans,11'\nset output ", width, height) + quoted(png) +
                     "\ndatafile = " + quoted(data_path) + "\n" + script;
  write_file_atomic(script_path, full);
  int rc = std::system(("gnuplot " + quoted(script_path) + " 2>/dev/null").c_str());
  std::remove(data_path.c_str());
  std::remove(script_path.c_str());
  if (rc != 0) log::warn("gnuplot failed to draw " + png);
  return rc == 0;
}

}  // namespace

bool gnuplot_available() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

bool line_chart(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
                const std::vector<Series>& series, bool points) {
  std::string data, plot = "plot ";
  for (size_t s = 0; s < series.size(); ++s) {
    for (size_t i = 0; i < series[s].x.size(); ++i) data += strf("%.10g %.10g\n", series[s].x[i], series[s].y[i]);
    data += "\n\n";
    plot += strf("%sdatafile index %zu using 1:2 with %s lw 2 title %s", s ? ", " : "", s, points ? "linespoints pt 7" : "lines",
                 quoted(series[s].title).c_str());
  }
  std::string script = "set title " + quoted(title) + "\nset xlabel " + quoted(xlabel) + "\nset ylabel " + quoted(ylabel) +
                       "\nset grid\nset key outside right\n" + plot + "\n";
  return run_script(png, script, data);
}

bool heatmap(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
             const std::vector<std::vector<double>>& values) {
  std::string data;
  for (const auto& row : values) {
    for (size_t c = 0; c < row.size(); ++c) data += strf("%s%.10g", c ? " " : "", row[c]);
    data += "\n";
  }
  const size_t rows = values.size(), cols = rows ? values[0].size() : 0;
  std::string script = "set title " + quoted(title) + "\nset xlabel " + quoted(xlabel) + "\nset ylabel " + quoted(ylabel) +
                       strf("\nset xrange [-0.5:%zu.5]\nset yrange [%zu.5:-0.5]\n", cols ? cols - 1 : 0, rows ? rows - 1 : 0) +
                       "set palette rgbformulae 33,13,10\n" +
                       // Square cells when the matrix is roughly square; a wide one (tokens x experts) fills the page.
                       (rows && cols && rows * 4 >= cols && cols * 4 >= rows ? "set size ratio -1\n" : "") +
                       (rows <= 32 ? "set ytics 1\n" : "") + "plot datafile matrix with image notitle\n";
  return run_script(png, script, data);
}

bool bar_chart(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
               const std::vector<std::string>& labels, const std::vector<double>& values) {
  std::string data;
  for (size_t i = 0; i < values.size(); ++i) data += strf("%zu %s %.10g\n", i, quoted(labels[i]).c_str(), values[i]);
  std::string script = "set title " + quoted(title) + "\nset xlabel " + quoted(xlabel) + "\nset ylabel " + quoted(ylabel) +
                       "\nset style fill solid 0.8\nset boxwidth 0.8\nset grid ytics\nset yrange [0:*]\n" +
                       (values.size() > 40 ? std::string("set xtics auto\n") : std::string("set xtics rotate by -45\n")) +
                       (values.size() > 40 ? "plot datafile using 1:3 with boxes notitle\n"
                                           : "plot datafile using 1:3:xtic(2) with boxes notitle\n");
  return run_script(png, script, data);
}

bool scatter(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
             const std::vector<Series>& series, bool log_x) {
  std::string data, plot = "plot ";
  for (size_t s = 0; s < series.size(); ++s) {
    const bool labelled = !series[s].labels.empty();
    for (size_t i = 0; i < series[s].x.size(); ++i)
      data += strf("%.10g %.10g %s\n", series[s].x[i], series[s].y[i], labelled ? quoted(series[s].labels[i]).c_str() : "\"\"");
    data += "\n\n";
    plot += strf("%sdatafile index %zu using 1:2 with points pt %zu ps 2 lw 2 title %s", s ? ", " : "", s, 5 + 2 * (s % 6),
                 quoted(series[s].title).c_str());
    if (labelled) plot += strf(", datafile index %zu using 1:2:3 with labels offset char 1.2,0.6 font 'Sans,9' notitle", s);
  }
  std::string script = "set title " + quoted(title) + "\nset xlabel " + quoted(xlabel) + "\nset ylabel " + quoted(ylabel) +
                       (log_x ? "\nset logscale x" : "") +
                       "\nset grid\nset key outside right\nset offsets graph 0.05, graph 0.05, graph 0.05, graph 0.05\n" + plot + "\n";
  return run_script(png, script, data);
}

bool colored_text(const std::string& png, const std::string& title, const std::vector<std::string>& characters,
                  const std::vector<int>& classes, const std::vector<std::string>& class_names, int columns) {
  static const char* kColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                   "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#000080", "#808000"};
  std::string data;
  int x = 0, y = 0;
  for (size_t i = 0; i < characters.size(); ++i) {
    const std::string& c = characters[i];
    if (c == "\n" || x >= columns) {
      x = 0;
      ++y;
      if (c == "\n") continue;
    }
    if (c != " ") data += strf("%d %d %s %d\n", x, -y, quoted(c).c_str(), classes[i]);
    ++x;
  }
  const int lines = y + 1, height = 150 + 24 * lines;
  const size_t n = std::max<size_t>(1, class_names.size());
  std::string palette = "set palette maxcolors " + std::to_string(n) + "\nset palette defined (";
  std::string legend;
  for (size_t k = 0; k < n; ++k) {
    const char* colour = kColours[k % 12];
    palette += strf("%s%zu '%s'", k ? ", " : "", k, colour);
    if (k < class_names.size())
      legend += strf("set label %zu %s at screen %.4f, screen %.4f tc rgb '%s' font 'Sans,12'\n", k + 1,
                     quoted(class_names[k]).c_str(), 0.03 + 0.94 * static_cast<double>(k) / n, 1.0 - 30.0 / height, colour);
  }
  palette += ")\n";
  std::string script = "set title " + quoted(title) + "\nunset xtics\nunset ytics\nunset border\nunset colorbox\n" +
                       strf("set xrange [-1:%d]\nset yrange [%d:1]\nset cbrange [-0.5:%.1f]\nset tmargin 7\n", columns + 1, -lines,
                            static_cast<double>(n) - 0.5) +
                       palette + legend + "plot datafile using 1:2:3:4 with labels tc palette font 'Mono,12' notitle\n";
  return run_script(png, script, data, 1200, height);
}

}  // namespace moelab::plot
