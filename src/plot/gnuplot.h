#pragma once
// Pictures through gnuplot (Debian's gnuplot-nox, pngcairo terminal): moelab writes the data
// and a script, gnuplot draws. Each function returns false (and logs why) when gnuplot is
// missing or fails, so a run never dies for want of a picture.
#include <string>
#include <vector>

namespace moelab::plot {

struct Series {
  std::string title;
  std::vector<double> x, y;
  std::vector<std::string> labels;  // scatter: a label beside each point (none when empty)
};

bool line_chart(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
                const std::vector<Series>& series, bool points = false);
// A matrix as a heatmap (rows top to bottom).
bool heatmap(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
             const std::vector<std::vector<double>>& values);
bool bar_chart(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
               const std::vector<std::string>& labels, const std::vector<double>& values);

// Points only, one marker style per series (e.g. one per routing strategy), each point with
// its label where the series has labels; `log_x`: a logarithmic x axis.
bool scatter(const std::string& png, const std::string& title, const std::string& xlabel, const std::string& ylabel,
             const std::vector<Series>& series, bool log_x = false);

// Text laid out `columns` characters per line, each character coloured by its class
// (0..classes-1), with a legend of class names.
bool colored_text(const std::string& png, const std::string& title, const std::vector<std::string>& characters,
                  const std::vector<int>& classes, const std::vector<std::string>& class_names, int columns);

bool gnuplot_available();

}  // namespace moelab::plot
