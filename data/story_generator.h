#pragma once
// The embedded corpus: a seeded generator of simple children's stories, so that moelab
// trains on real-looking text with no download. Same seed, same text, on every machine
// (it draws from std::mt19937_64, whose sequence the standard fixes, and never from
// std::*_distribution, whose output is implementation-defined).
#include <cstdint>
#include <string>

namespace moelab {

// `stories` stories in the TinyStories file format (each followed by "<|endoftext|>"), in
// `style` "tales" (children's stories) or "fables" (a different domain of the same alphabet).
std::string generate_stories(int64_t stories, uint64_t seed, const std::string& style = "tales");

}  // namespace moelab
